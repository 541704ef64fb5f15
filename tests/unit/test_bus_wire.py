"""The batched NATS writer's wire format, and the nats-py internals it relies on."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from gatekeeper.bus.wire import AckSink, pub_command, supported


class TestCommands:
    def test_pub_without_headers(self) -> None:
        assert (
            pub_command("bh.events.route", b'{"a":1}') == b'PUB bh.events.route  7\r\n{"a":1}\r\n'
        )

    def test_pub_with_reply(self) -> None:
        assert pub_command("s", b"xy", "_INBOX.r.1") == b"PUB s _INBOX.r.1 2\r\nxy\r\n"

    def test_hpub_carries_the_dedup_id(self) -> None:
        """Header block then payload; the sizes are the header's and header+payload's."""
        cmd = pub_command("bh.audit.t.n", b"{}", "_INBOX.a.7", msg_id="n:1:ab")
        hdr = b"NATS/1.0\r\nNats-Msg-Id: n:1:ab\r\n\r\n"
        assert cmd == b"HPUB bh.audit.t.n _INBOX.a.7 %d %d\r\n%s{}\r\n" % (
            len(hdr),
            len(hdr) + 2,
            hdr,
        )


def test_nats_py_still_has_the_internals_the_writer_uses() -> None:
    """A nats-py upgrade that renames them must fail here, not in production."""
    assert supported(Client())


def test_ack_sink_forwards_every_message_and_never_completes() -> None:
    seen: list[bytes] = []
    sink = AckSink(lambda m: seen.append(m.data))
    for payload in (b"1", b"2"):
        sink.set_result(Msg(Client(), subject="s", data=payload))
    assert seen == [b"1", b"2"]
    assert not sink.cancelled() and not sink.done()


def test_nats_py_kv_handles_still_expose_their_bucket_and_jetstream_context() -> None:
    """``kv_snapshot`` and ``ConfigWatcher`` read ``KeyValue._name`` and ``._js``."""
    js = Client().jetstream()
    kv = KeyValue(
        name="BH_CONFIG", stream="KV_BH_CONFIG", pre="$KV.BH_CONFIG.", js=js, direct=False
    )
    assert kv._name == "BH_CONFIG" and kv._js is js
    assert f"$KV.{kv._name}." == kv._pre  # the subject prefix the snapshot strips
