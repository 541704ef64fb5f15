"""A fast fake OpenAI upstream for benchmarks: a raw asyncio Protocol on uvloop.

    .venv/bin/python -m bench.upstream --port 9001 [--chunks 20] [--chunk-delay-ms 0]
                                       [--reply-delay-ms 0]

Answers, on 127.0.0.1 only, with HTTP/1.1 keep-alive:

* ``POST /v1/chat/completions``: a fixed ``chat.completion`` JSON with usage, or,
  when the body asks for ``"stream": true``, an SSE stream of ``--chunks`` chunks
  (optionally ``--chunk-delay-ms`` apart), then a usage chunk and ``data: [DONE]``;
* ``POST /v1/embeddings``: a fixed embedding list with usage;
* ``GET /health``: ``ok``; anything else: 404 in OpenAI's error shape.

Request framing follows RFC 9112: bodies by ``Content-Length`` or chunked
transfer coding; requests on one connection are answered in order. Replies are
prebuilt bytes, so the hot path is: find the header end, read the length, slice the
body, write one buffer. Not a general HTTP server — just fast enough (tens of
thousands of requests per second on one core) to never be the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

import orjson

HOST = "127.0.0.1"
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
CREATED = 1_700_000_000


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: keep-alive\r\n\r\n"
        + body
    )


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
        }
    )


def embeddings_body() -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0123] * 16}],
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )


def stream_events(chunks: int) -> list[bytes]:
    """The SSE events of one streamed completion: content chunks, usage, [DONE]."""

    def event(obj: object) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_bench",
    }
    out = [
        event(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
    ]
    for i in range(chunks):
        out.append(
            event(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": f"tok{i} "},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
    out.append(
        event(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            }
        )
    )
    out.append(
        event(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": chunks,
                    "total_tokens": 12 + chunks,
                },
            }
        )
    )
    out.append(b"data: [DONE]\n\n")
    return out


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Replies:
    """Every byte string the server sends, built once at start."""

    def __init__(self, chunks: int, chunk_delay_s: float, reply_delay_s: float = 0.0) -> None:
        self.chat = _response("200 OK", completion_body())
        self.embeddings = _response("200 OK", embeddings_body())
        self.health = _response("200 OK", b"ok", b"text/plain")
        self.not_found = _response(
            "404 Not Found",
            orjson.dumps(
                {
                    "error": {
                        "message": "Unknown path",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "unknown_url",
                    }
                }
            ),
        )
        self.bad_request = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            b"connection: keep-alive\r\n\r\n"
        )
        self.stream_chunks = [_http_chunk(e) for e in stream_events(chunks)]
        self.stream_all = self.stream_head + b"".join(self.stream_chunks) + b"0\r\n\r\n"
        self.chunk_delay_s = chunk_delay_s
        self.reply_delay_s = reply_delay_s  # before a unary chat completion's reply


class BadRequest(Exception):
    pass


def _content_length(head_lower: bytes) -> int:
    at = head_lower.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head_lower.find(b"\r\n", at + 17)
    try:
        n = int(head_lower[at + 17 : end if end >= 0 else None].strip())
    except ValueError:
        raise BadRequest from None
    if n < 0 or n > _MAX_BODY:
        raise BadRequest
    return n


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``: (body, end offset) or None if partial."""
    body = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest from None
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # skip trailers, if any
            return (bytes(body), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2
        if len(body) > _MAX_BODY:
            raise BadRequest


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("_buf", "_busy", "_closing", "_stream", "replies", "transport")

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a delayed stream is being written
        self._closing = False
        self._stream: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._drain()

    def _drain(self) -> None:
        transport = self.transport
        assert transport is not None
        while self._buf and not self._busy and not self._closing:
            try:
                parsed = self._next_request()
            except BadRequest:
                transport.write(self.replies.bad_request)
                transport.close()
                self._closing = True
                return
            if parsed is None:
                if len(self._buf) > _MAX_HEAD + _MAX_BODY:
                    transport.close()
                return
            line, body, close = parsed
            self._answer(line, body)
            if close:
                transport.close()
                self._closing = True

    def _next_request(self) -> tuple[bytes, bytes, bool] | None:
        buf = self._buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > _MAX_HEAD:
                raise BadRequest
            return None
        head = bytes(buf[:head_end])
        line_end = head.find(b"\r\n")
        line = head if line_end < 0 else head[:line_end]
        lower = head.lower()
        start = head_end + 4
        if b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
            decoded = _dechunk(buf, start)
            if decoded is None:
                return None
            body, end = decoded
        else:
            end = start + _content_length(lower)
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
        del buf[:end]
        close = b"\r\nconnection: close" in lower or line.endswith(b"HTTP/1.0")
        return line, body, close

    def _answer(self, line: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        r = self.replies
        if line.startswith(b"POST /v1/chat/completions"):
            if _STREAM_RE.search(body) is None and r.reply_delay_s > 0:
                self._busy = True
                self._stream = asyncio.ensure_future(self._delayed(r.chat))
            elif _STREAM_RE.search(body) is None:
                transport.write(r.chat)
            elif r.chunk_delay_s <= 0:
                transport.write(r.stream_all)
            else:
                self._busy = True
                self._stream = asyncio.ensure_future(self._paced_stream())
        elif line.startswith(b"POST /v1/embeddings"):
            transport.write(r.embeddings)
        elif line.startswith(b"GET /health"):
            transport.write(r.health)
        else:
            transport.write(r.not_found)

    async def _delayed(self, reply: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            await asyncio.sleep(self.replies.reply_delay_s)
            if not self._closing:
                transport.write(reply)
        finally:
            self._busy = False
        if self._buf and not self._closing:
            self._drain()

    async def _paced_stream(self) -> None:
        transport = self.transport
        assert transport is not None
        r = self.replies
        try:
            transport.write(r.stream_head)
            for i, chunk in enumerate(r.stream_chunks):
                if i:
                    await asyncio.sleep(r.chunk_delay_s)
                if self._closing:
                    return
                transport.write(chunk)
            transport.write(b"0\r\n\r\n")
        finally:
            self._busy = False
        if self._buf and not self._closing:
            self._drain()


async def serve(port: int, replies: Replies) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(replies), HOST, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream listening on http://{HOST}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    p.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="pause between stream chunks (0: write the stream at once)",
    )
    p.add_argument(
        "--reply-delay-ms",
        type=float,
        default=0.0,
        help="pause before a unary chat completion's reply (0: answer at once)",
    )
    args = p.parse_args(argv)
    replies = Replies(args.chunks, args.chunk_delay_ms / 1000, args.reply_delay_ms / 1000)
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed; falling back to asyncio", file=sys.stderr)
        asyncio.run(serve(args.port, replies))
    else:
        uvloop.run(serve(args.port, replies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
