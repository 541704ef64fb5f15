"""The pure parts of gatekeeper.batches: line checks, slicing, verification, status."""

from __future__ import annotations

import orjson
import pytest
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.auth.paserk import pid
from gatekeeper.batches.api import responses_body_error
from gatekeeper.batches.lines import Line, check_file, parse_checked, plan_slices
from gatekeeper.batches.multipart import boundary_of, parse_form
from gatekeeper.batches.results import (
    LineResult,
    aggregate,
    request_line_id,
    usage_of,
    verify,
    well_formed,
)
from gatekeeper.batches.signing import open_value, seal_value
from gatekeeper.batches.status import (
    BATCH_ID,
    Progress,
    batch_usage,
    can_cancel,
    finished_status,
    live_counts,
    moved,
    new_batch,
    new_id,
    page,
    progress_event,
)
from gatekeeper.batches.worker import Job, parse_job
from gatekeeper.batchesconfig import parse_batches
from gatekeeper.errors import ConfigError, InvalidRequest, UnsupportedMediaType

CHAT = "/v1/chat/completions"


def raw(cid: object, url: str = CHAT, **body: object) -> bytes:
    return orjson.dumps(
        {"custom_id": cid, "method": "POST", "url": url, "body": {"model": "m", **body}}
    )


def check(content: bytes, **kw: int) -> object:
    return check_file(
        content,
        CHAT,
        lambda m: m == "m",
        max_lines=kw.get("max_lines", 100),
        max_line_bytes=kw.get("max_line_bytes", 4096),
    )


class TestCheckFile:
    def test_good_lines_are_kept_in_order_and_blank_lines_ignored(self) -> None:
        got = check_file(
            raw("a") + b"\n\n" + raw("b") + b"\n",
            CHAT,
            lambda m: True,
            max_lines=9,
            max_line_bytes=999,
        )
        assert [(x.index, x.custom_id) for x in got.lines] == [(0, "a"), (1, "b")]
        assert got.errors == () and orjson.loads(got.lines[0].body) == {"model": "m"}
        assert [x.custom_id for x in parse_checked(raw("a") + b"\n" + raw("b"))] == ["a", "b"]

    @pytest.mark.parametrize(
        ("line", "code"),
        [
            (b"[1]", "invalid_json_line"),
            (b"{", "invalid_json_line"),
            (raw(""), "missing_custom_id"),
            (raw(7), "missing_custom_id"),
            (raw("x", url="/v1/embeddings"), "mismatched_url"),
            (
                orjson.dumps({"custom_id": "x", "method": "GET", "url": CHAT, "body": {}}),
                "invalid_method",
            ),
            (
                orjson.dumps({"custom_id": "x", "method": "POST", "url": CHAT, "body": 1}),
                "invalid_body",
            ),
            (
                orjson.dumps({"custom_id": "x", "method": "POST", "url": CHAT, "body": {}}),
                "missing_model",
            ),
            (raw("x", model="other"), "model_not_allowed"),
            (raw("x", stream=True), "stream_not_supported"),
            (raw("x", pad="y" * 5000), "line_too_large"),
        ],
    )
    def test_each_bad_line_is_named(self, line: bytes, code: str) -> None:
        got = check(raw("ok") + b"\n" + line)
        assert [(e.line, e.code) for e in got.errors] == [(2, code)]  # type: ignore[attr-defined]

    def test_duplicates_empty_files_and_too_many_lines(self) -> None:
        assert [e.code for e in check(raw("a") + b"\n" + raw("a")).errors] == [
            "duplicate_custom_id"
        ]  # type: ignore[attr-defined]
        assert [e.code for e in check(b"\n\n").errors] == ["empty_file"]  # type: ignore[attr-defined]
        many = b"\n".join(raw(str(i)) for i in range(3))
        assert [e.code for e in check(many, max_lines=2).errors] == ["too_many_lines"]  # type: ignore[attr-defined]

    def test_errors_reported_are_capped_but_counted(self) -> None:
        got = check(b"\n".join(b"{" for _ in range(150)), max_lines=200)
        assert len(got.errors) == 100 and got.error_count == 150  # type: ignore[attr-defined]


RESPONSES = "/v1/responses"


class TestResponsesLines:
    def check(self, *rows: bytes) -> object:
        def parse(body: dict[str, object]) -> str | None:
            return responses_body_error(body, {})

        return check_file(
            b"\n".join(rows),
            RESPONSES,
            lambda m: m == "m",
            max_lines=10,
            max_line_bytes=4096,
            parse=parse,
        )

    def test_a_body_the_responses_api_refuses_is_a_line_error(self) -> None:
        """Parsed as ``POST /v1/responses`` parses it: a hosted tool or a bad input
        is ``invalid_body`` naming the reason; a stream is ``stream_not_supported``."""
        good = raw("a", RESPONSES, input="hi")
        tool = raw("b", RESPONSES, input="hi", tools=[{"type": "web_search"}])
        bad_input = raw("c", RESPONSES, input=5)
        stream = raw("d", RESPONSES, input="hi", stream=True)
        wrong_url = raw("e", CHAT, input="hi")
        got = self.check(good, tool, bad_input, stream, wrong_url)
        assert [x.custom_id for x in got.lines] == ["a"]  # type: ignore[attr-defined]
        errors = [(e.code, e.line, e.param) for e in got.errors]  # type: ignore[attr-defined]
        assert errors == [
            ("invalid_body", 2, "body"),
            ("invalid_body", 3, "body"),
            ("stream_not_supported", 4, "body.stream"),
            ("mismatched_url", 5, "url"),
        ]
        assert "function tools" in got.errors[0].message  # type: ignore[attr-defined]

    def test_a_response_object_is_well_formed_and_its_usage_counted(self) -> None:
        body = {
            "object": "response",
            "output": [],
            "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
        }
        r = LineResult(0, "a", 200, "b:0", body)
        assert well_formed(RESPONSES, r) and r.tokens == (5, 3) and usage_of(body) == (5, 3)
        chat = {"object": "chat.completion", "choices": [], "usage": body["usage"]}
        assert not well_formed(RESPONSES, LineResult(0, "a", 200, "b:0", chat))
        assert usage_of(chat) == (0, 0)  # a chat body's usage names prompt/completion tokens
        assert not well_formed(RESPONSES, LineResult(0, "a", 200, "b:0", {"object": "response"}))


def test_slices_cover_every_line_once() -> None:
    slices = plan_slices(10, 4)
    assert [(s.n, s.start, s.end) for s in slices] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert plan_slices(0, 4) == ()


def result(
    i: int, cid: str, status: int = 200, body: dict[str, object] | None = None
) -> LineResult:
    ok = {"object": "chat.completion", "choices": []}
    return LineResult(i, cid, status, f"b:{i}", body if body is not None else ok)


LINES = [Line(0, "a", b"{}"), Line(1, "b", b"{}"), Line(2, "c", b"{}")]


class TestAggregate:
    def test_outputs_errors_and_counts(self) -> None:
        err = {"error": {"code": "x"}}
        agg = aggregate(
            "batch_1",
            CHAT,
            LINES,
            {0: result(0, "a"), 1: result(1, "b", 429, err), 2: result(2, "c")},
            None,
        )
        assert agg.problems == () and (agg.completed, agg.failed) == (2, 1)
        out = [orjson.loads(x) for x in agg.output.splitlines()]
        assert [o["custom_id"] for o in out] == ["a", "c"]
        assert out[0]["id"] == request_line_id("batch_1", 0) and out[0]["error"] is None
        assert out[0]["response"] == {
            "status_code": 200,
            "request_id": "b:0",
            "body": result(0, "a").body,
        }
        assert orjson.loads(agg.errors)["response"]["status_code"] == 429

    def test_a_missing_line_fails_verification_unless_it_never_ran(self) -> None:
        results = {0: result(0, "a")}
        assert [p.code for p in aggregate("b", CHAT, LINES, results, None).problems] == [
            "missing_result",
            "missing_result",
        ]
        agg = aggregate("b", CHAT, LINES, results, "cancelled")
        assert agg.problems == () and (agg.completed, agg.failed) == (1, 2)
        rows = [orjson.loads(x) for x in agg.errors.splitlines()]
        assert [(r["custom_id"], r["error"]["code"], r["response"]) for r in rows] == [
            ("b", "batch_cancelled", None),
            ("c", "batch_cancelled", None),
        ]

    def test_mismatched_malformed_and_unexpected_results_are_problems(self) -> None:
        results = {
            0: result(0, "zzz"),
            1: result(1, "b", body={"object": "list"}),
            2: result(2, "c", 500, body={"no": "error"}),
            7: result(7, "h"),
        }
        codes = sorted(p.code for p in aggregate("b", CHAT, LINES, results, None).problems)
        assert codes == [
            "malformed_result",
            "malformed_result",
            "mismatched_result",
            "unexpected_result",
        ]
        emb = {0: result(0, "a", body={"object": "list", "data": []})}
        assert aggregate("b", "/v1/embeddings", LINES[:1], emb, None).problems == ()

    def test_files_and_usage_are_verified_before_publishing(self) -> None:
        def used(i: int, cid: str, tokens: tuple[int, int], status: int = 200) -> LineResult:
            body: dict[str, object] = {"object": "chat.completion", "choices": []}
            if status == 200:
                body["usage"] = {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]}
            else:
                body = {"error": {"code": "x"}}
            return LineResult(i, cid, status, f"b:{i}", body, "n", tokens)

        results = {0: used(0, "a", (3, 4)), 1: used(1, "b", (0, 0), 429), 2: used(2, "c", (5, 1))}
        agg = aggregate("b", CHAT, LINES, results, None)
        assert verify(LINES, agg.output, agg.errors, results, (8, 5)) == ()
        # the batch's usage (its slices' sum) is not its lines' sum
        (p,) = verify(LINES, agg.output, agg.errors, results, (8, 6))
        assert p.code == "usage_mismatch" and p.line is None
        assert verify(LINES, agg.output, agg.errors, results, None) == ()  # cancelled/expired
        # a recorded usage that is not the response's
        lying = {**results, 2: LineResult(2, "c", 200, "b:2", results[2].body, "n", (0, 0))}
        codes = [(p.code, p.line) for p in verify(LINES, agg.output, agg.errors, lying, (8, 5))]
        assert codes == [("usage_mismatch", 3), ("usage_mismatch", None)]
        # a custom_id twice, one missing, one unknown
        first = agg.output.splitlines()[0] + b"\n"
        stranger = orjson.dumps({"custom_id": "zz"}) + b"\n"
        codes = [(p.code, p.line) for p in verify(LINES, first * 2, stranger, results, None)]
        assert codes == [
            ("custom_id_count", 1),
            ("custom_id_count", 2),
            ("custom_id_count", 3),
            ("unknown_custom_id", None),
        ]

    def test_usage_is_read_from_bodies_and_records(self) -> None:
        body = {"usage": {"prompt_tokens": 7, "completion_tokens": "x"}}
        r = LineResult(0, "a", 200, "b:0", body)
        assert r.tokens == (7, 0)
        r2 = LineResult(0, "a", 200, "b:0", body, "n", (7, 2))
        assert LineResult.from_dict(r2.to_dict()) == r2 and r2.tokens == (7, 2)
        assert LineResult.from_dict({**r2.to_dict(), "usage": [1, -1]}) is None
        p = Progress().add(True, (3, 4)).add(False, (1, 0))
        assert (p.done, p.completed, p.failed, p.input_tokens, p.output_tokens) == (2, 1, 1, 4, 4)
        assert Progress.from_dict(p.to_dict()) == p
        assert batch_usage([p, Progress(input_tokens=1)]) == (5, 4)

    def test_results_read_back_only_when_well_typed(self) -> None:
        r = result(0, "a")
        assert LineResult.from_dict(r.to_dict()) == r
        assert LineResult.from_dict({**r.to_dict(), "index": "0"}) is None
        assert LineResult.from_dict({**r.to_dict(), "body": []}) is None


class TestStatus:
    def test_moves_stamp_their_time_once(self) -> None:
        b = new_batch("batch_x", CHAT, "file-x", "24h", None, 100)
        assert b["status"] == "validating" and b["expires_at"] == 100 + 86400
        b = moved(b, "in_progress", 101)
        b = moved(moved(b, "cancelling", 102), "cancelling", 109)
        assert (b["in_progress_at"], b["cancelling_at"]) == (101, 102)

    def test_where_a_finished_batch_ends(self) -> None:
        assert finished_status("finalizing", False, False) == "completed"
        assert finished_status("in_progress", True, False) == "expired"
        assert finished_status("cancelling", True, False) == "cancelled"
        assert finished_status("cancelling", False, True) == "failed"
        assert can_cancel("in_progress") and not can_cancel("completed")

    def test_live_counts_sum_the_slices(self) -> None:
        slices = [Progress(3, 2, 1), Progress.from_dict({"done": 1, "completed": 1, "failed": -4})]
        assert live_counts(9, slices) == {"total": 9, "completed": 3, "failed": 1}

    def test_pages_are_newest_first_after_a_cursor(self) -> None:
        items = [{"id": f"b{i}", "created_at": i} for i in range(5)]
        first, more = page(items, None, 2)
        assert [b["id"] for b in first] == ["b4", "b3"] and more
        rest, more = page(items, "b3", 9)
        assert [b["id"] for b in rest] == ["b2", "b1", "b0"] and not more
        assert page(items, "nope", 9) == ([], False)


class TestMultipart:
    FORM = (
        b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nline1\r\nline2\r\n--XX--\r\n"
    )

    def test_a_form_splits_into_its_parts(self) -> None:
        parts = parse_form(self.FORM, boundary_of('multipart/form-data; boundary="XX"'))
        assert parts["purpose"].data == b"batch" and parts["purpose"].filename is None
        assert parts["file"].filename == "a.jsonl" and parts["file"].data == b"line1\r\nline2"

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"garbage",
            b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\nno end',
            b"--XX\r\nno header block--XX--",
            b"--XX\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XX--",
            b'--XX\r\nContent-Disposition: attachment; name="a"\r\n\r\nv\r\n--XX--',
            b"--XX\r\nBroken header\r\n\r\nv\r\n--XX--",
            b'--XXContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--XX--',
            FORM.replace(b'name="file"', b'name="purpose"'),
            b"".join(
                b'--XX\r\nContent-Disposition: form-data; name="p%d"\r\n\r\nv\r\n' % i
                for i in range(9)
            )
            + b"--XX--",
        ],
    )
    def test_malformed_forms_are_400(self, body: bytes) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_form(body, b"XX")
        assert info.value.status == 400

    def test_the_content_type_must_be_a_form_with_a_boundary(self) -> None:
        with pytest.raises(UnsupportedMediaType):
            boundary_of("application/json")
        with pytest.raises(InvalidRequest):
            boundary_of("multipart/form-data")


class Owners:
    def __init__(self, *keys: VerifyKey) -> None:
        self.keys = {pid(bytes(k)): ("n1", k) for k in keys}

    def owner_of(self, kid: str) -> tuple[str, VerifyKey] | None:
        return self.keys.get(kid)


class TestSigning:
    def test_only_a_registered_key_for_the_same_name_opens(self) -> None:
        key, stranger = SigningKey.generate(), SigningKey.generate()
        owners = Owners(key.verify_key)
        data = seal_value(key, "line.b.1", {"x": 1})
        assert open_value(data, "line.b.1", owners) == {"x": 1}
        assert open_value(data, "line.b.2", owners) is None  # copied under another key
        assert open_value(seal_value(stranger, "line.b.1", {"x": 1}), "line.b.1", owners) is None
        doc = orjson.loads(data)
        doc["body"] = {"x": 2}
        assert open_value(orjson.dumps(doc), "line.b.1", owners) is None  # altered
        assert open_value(b"not json", "line.b.1", owners) is None
        assert open_value(orjson.dumps({**doc, "iat": "now"}), "line.b.1", owners) is None


def test_jobs_parse_only_when_they_match_their_subject() -> None:
    job = Job("slice", "acme", "batch_1", 2, 6, 9)
    assert parse_job(job.subject, job.to_dict()) == job
    assert parse_job("bh.jobs.slice.batch_2", job.to_dict()) is None
    assert parse_job(job.subject, {**job.to_dict(), "start": 10}) is None
    assert parse_job(job.subject, {**job.to_dict(), "kind": "rm"}) is None
    assert parse_job(job.subject, [1]) is None


def test_the_batches_section_is_checked() -> None:
    cfg = parse_batches({"slice_lines": 5, "ack_wait_s": 2})
    assert cfg.requeue_every_s == 30.0 and cfg.test_completion_window_s == 0.0
    assert parse_batches({"test_completion_window_s": 1.5}).test_completion_window_s == 1.5
    with pytest.raises(ConfigError, match=r"batches\.requeue_every_s"):
        parse_batches({"requeue_every_s": 0})
    assert (cfg.slice_lines, cfg.ack_wait_s, cfg.workers) == (5, 2.0, 2)
    with pytest.raises(ConfigError, match=r"batches\.slices"):
        parse_batches({"slices": 5})
    with pytest.raises(ConfigError, match=r"batches\.slice_lines"):
        parse_batches({"slice_lines": 0})


def test_a_progress_event_counts_slices_and_estimates_the_rest() -> None:
    b = moved(new_batch("batch_x", CHAT, "file-x", "24h", None, 100), "in_progress", 100)
    b["request_counts"] = {"total": 10, "completed": 0, "failed": 0}
    slices = {0: Progress(4, 3, 1, finished=True), 1: Progress(1, 1, 0)}
    event = progress_event(b, slices, 4, now=110.0)
    assert event["request_counts"] == {"total": 10, "completed": 4, "failed": 1}
    assert event["slices"] == {"total": 4, "finished": 1, "running": 1, "queued": 2}
    assert event["eta_s"] == 10.0  # 2 s a line so far, 5 lines left
    assert progress_event(moved(b, "completed", 120), slices, 4, 130.0)["eta_s"] is None


def test_ids_list_in_the_order_they_were_made() -> None:
    ids = [new_id("batch_") for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(BATCH_ID.fullmatch(i) for i in ids)
