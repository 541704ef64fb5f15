"""The chat chunk stream → the Responses API's stream events, incrementally (pure).

    response.created  response.in_progress
    per output item:  response.output_item.added
      message:        response.content_part.added  response.output_text.delta*
                      response.output_text.done  response.content_part.done
      function_call:  response.function_call_arguments.delta*  …arguments.done
                      response.output_item.done
    response.completed (or response.incomplete)                  — from ``done``
    error  response.failed                                       — from ``error``

Ids are stable (``resp_``/``msg_``/``fc_`` + the request id) and every event carries
a ``sequence_number`` counting from 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gatekeeper.errors import GatewayError
from gatekeeper.ingress.chunks import chunks, deltas, sse
from gatekeeper.ingress.responses_wire import (
    _INCOMPLETE,
    call_item,
    message_item,
    response_body,
    usage_object,
)

Final = Callable[[dict[str, Any]], None]


class ResponsesStream:
    """Feed the pipeline's OpenAI SSE bytes; get Responses API SSE bytes back."""

    def __init__(
        self,
        rid: str,
        model: str,
        created: int,
        echo: Mapping[str, Any],
        store: bool,
        on_final: Final | None = None,
    ) -> None:
        self._rid, self._model, self._created, self._echo, self._store = (
            rid,
            model,
            created,
            echo,
            store,
        )
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # finished items, in output order
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._text: list[str] = []
        self._calls: dict[int, int] = {}  # chat tool-call index → call number
        self._finish: str | None = None
        self._usage: tuple[int, int] | None = None
        self.on_final = on_final

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(kind, data)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_body(
            self._rid,
            self._model,
            self._created,
            self._echo,
            status=status,
            store=self._store,
            **extra,
        )

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            start = self._response("in_progress", output=[])
            out += (
                self._event("response.created", response=start),
                self._event("response.in_progress", response=start),
            )
        for chunk in chunks(data):
            d = deltas(chunk)
            if d.usage is not None:
                self._usage = d.usage
            if d.finish is not None:
                self._finish = d.finish
            if d.text:
                out += self._text_delta(d.text)
            for index, call_id, name, args in d.calls:
                out += self._call_delta(index, call_id, name, args)
        return b"".join(out)

    def _index(self) -> int:
        return len(self._output)

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open["type"] != "message":
            out += self._close()
            item = self._open = message_item(self._rid, "", "in_progress")
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += (
                self._event("response.output_item.added", output_index=self._index(), item=item),
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._index(),
                    content_index=0,
                    part=part,
                ),
            )
        self._text.append(text)
        assert self._open is not None
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._open["id"],
                output_index=self._index(),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _call_delta(
        self, index: int, call_id: str | None, name: str | None, args: str
    ) -> list[bytes]:
        out: list[bytes] = []
        if index not in self._calls:
            out += self._close()
            n = self._calls[index] = len(self._calls)
            self._open = call_item(
                self._rid, n, call_id or f"call_{n}", name or "", "", "in_progress"
            )
            out.append(
                self._event(
                    "response.output_item.added", output_index=self._index(), item=dict(self._open)
                )
            )
        open_item = self._open
        if args and open_item is not None and open_item["type"] == "function_call":
            open_item["arguments"] += args
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=open_item["id"],
                    output_index=self._index(),
                    delta=args,
                )
            )
        return out

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        at = self._index()
        out: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            done = message_item(self._rid, text)
            part = done["content"][0]
            out += (
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=at,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=at,
                    content_index=0,
                    part=part,
                ),
            )
        else:
            done = {**item, "status": "completed"}
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=at,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        out.append(self._event("response.output_item.done", output_index=at, item=done))
        self._output.append(done)
        return out

    def final(self) -> dict[str, Any]:
        prompt, completion = self._usage or (0, 0)
        incomplete = _INCOMPLETE.get(self._finish or "stop")
        return self._response(
            "incomplete" if incomplete else "completed",
            output=self._output,
            usage=usage_object(prompt, completion),
            incomplete=incomplete,
        )

    def done(self, ex: Any = None) -> bytes:
        out = self._close()
        response = self.final()
        if self.on_final is not None:
            self.on_final(response)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        """The stream failed after it started: ``error``, then ``response.failed``."""
        out = [self._event("error", code=err.code, message=err.message, param=err.param)]
        failed = self._response(
            "failed",
            output=self._output,
            error={"code": err.code or "server_error", "message": err.message},
        )
        out.append(self._event("response.failed", response=failed))
        return b"".join(out)
