"""uvicorn's httptools protocol with the two limits it lacks: a header deadline and a header size.

uvicorn (0.54, httptools) closes a connection that idles *between* requests
(``timeout_keep_alive``), but nothing bounds the header phase: a connection that sends
nothing after connecting, or sends its headers a byte at a time (slowloris), is kept forever,
and httptools buffers a header line of any length. This subclass adds:

- a header deadline: the request line and headers must be complete within
  ``header_timeout_s`` of the connection opening (first request) or of the request's first
  byte (later requests on a kept-alive connection); otherwise ``408`` and the connection is
  closed;
- a header size limit: more than ``max_header_bytes`` without the end of the headers is
  answered ``431`` and closed (counted per read from the read after the request's first
  byte, so at most two reads, <= 512 KiB, more are buffered).

- a bound on pipelining: uvicorn parses pipelined requests into a queue while the first is
  answered, and every ``receive()`` of the running request resumes reading, so a client that
  pipelines faster than the server answers grows that queue without limit (measured: +35 MiB
  for 5,000 pipelined 12 KiB requests). Reading now stays paused while
  :data:`MAX_PIPELINED` requests wait; the rest waits in the kernel's socket buffers.

The body phase is bounded by the ASGI core itself (``body_timeout_s``, 408), so it holds for
every host; these two need the protocol and apply to the uvicorn host only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Parsed requests that may wait behind the one being answered on a connection.
MAX_PIPELINED = 8

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _PipelineFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while the pipeline is full."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if len(self._protocol.pipeline) < MAX_PIPELINED:
            super().resume_reading()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; limits are class attributes, set by :func:`guarded_protocol`."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._began = False
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _PipelineFlow(transport, self)  # before any request cycle captures it
        # From the connection on: a client that connects and sends nothing is bounded too.
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._awaiting_headers
        self._began = False
        super().data_received(data)
        # Only a read that lies wholly inside one request's headers is counted: a read that
        # starts a request may also end earlier (pipelined) ones, whose bytes are not headers.
        if counting and self._awaiting_headers and not self._began:
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, f"request headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        # Between this and the next request's first byte (on_message_begin), uvicorn's
        # keep-alive timeout bounds an idle connection.
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.timeout_keep_alive_task is not None:
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Pipelined requests: reading is paused while earlier requests on this connection
            # are answered, so the wait is the server's, not the client's. Look again later.
            self._arm_header_timer()
            return
        self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer before any ASGI cycle exists for this request, then close."""
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # else: mid-response, just close
            body = ('{"error":"' + message + '"}').encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
            )
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes},
    )
