"""A bounded HTTP/1.1 front before the server's HTTP stack: the request head's size, count and arrival time.

Ray Serve's proxy (uvicorn + httptools) keeps reading a request head for as long and as large as a client sends it
(three 128 MiB headers grew it by 900 MiB; a slow header sender is never cut off), and answers a bad request line
or Content-Length with plain text; its options do not reach the parser. So `wanrt serve` listens here and hands
the proxy only heads that passed `Limits`:

    client ──▶ Front (host:port): head ≤ max_header_bytes within header_timeout_s, ≤ max_headers lines, one valid
               Content-Length or chunked, at most max_connections ──▶ proxy/uvicorn on 127.0.0.1:<internal port>

Everything refused here gets the OpenAI error shape. One request per client connection (`Connection: close` is
sent upstream and only that request's body is forwarded, framed by its Content-Length or chunks), so no second,
unchecked head can follow on a kept-alive connection. Body size and body deadline stay where they are (the app's
`Guard`: 413/408); the front forwards body bytes as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import socket
import threading

from wanrt.errors import BadInputError
from wanrt.runtime.serving.limits import ApiError, Limits

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET = re.compile(rb"^[\x21-\x7e]+$")  # visible ASCII: no spaces or controls inside the target
# hop-by-hop or client knobs the server must not take from a client: Ray's proxy lets this one disable its timeout
_DROPPED = {b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"x-request-timeout-seconds"}
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,15}$")
# what the HTTP stack behind routes (anything else it answers in plain text): 405 here, in the error shape
_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"}
_CHUNK_LINE = 1024  # a chunk-size line (hex size + extensions)
_IO = 65536


class Refused(Exception):
    def __init__(self, err: ApiError):
        super().__init__(err.message)
        self.err = err


def _refuse(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Refused:
    return Refused(ApiError(status, message, code=code, headers=headers))


def error_bytes(err: ApiError) -> bytes:
    body = json.dumps(err.body()).encode()
    head = [f"HTTP/1.1 {err.status} {_REASONS.get(err.status, 'Error')}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in err.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large",
            501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}


async def read_head(reader: asyncio.StreamReader, limits: Limits) -> list[bytes]:
    """The request line and header lines (CRLF stripped), read line by line so the bytes after the head stay in
    the reader for the body; refused past max_header_bytes (the reader's limit: never more is buffered) or when
    the head has not arrived header_timeout_s after the connection opened."""

    async def lines() -> list[bytes]:
        out, total = [], 0
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError:
                line = b""
                total = limits.max_header_bytes + 1
            total += len(line)
            if total > limits.max_header_bytes:
                if not out:
                    raise _refuse(414, f"the request line exceeds {limits.max_header_bytes} bytes", "uri_too_long")
                raise _refuse(431, f"the request headers exceed {limits.max_header_bytes} bytes",
                              "headers_too_large")
            if line == b"\r\n":
                if out:
                    return out
                continue  # RFC 9112: ignore empty lines before the request line
            out.append(line[:-2])
            if len(out) - 1 > limits.max_headers:
                raise _refuse(431, f"more than {limits.max_headers} request headers", "too_many_headers")

    try:
        return await asyncio.wait_for(lines(), limits.header_timeout_s)
    except asyncio.TimeoutError:
        raise _refuse(408, f"the request headers did not arrive within {limits.header_timeout_s:g} s",
                      "header_timeout") from None


def parse_head(lines: list[bytes]) -> tuple[bytes, list[tuple[bytes, bytes]], int | None, bool]:
    """(request line, headers, content length, chunked), or Refused with the reason. Strict where uvicorn's
    parsers and ours could disagree (duplicate or malformed lengths, both framings, folded lines)."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        raise _refuse(400, "malformed request line", "invalid_request_line")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _refuse(505, "only HTTP/1.0 and HTTP/1.1 are served", "http_version_not_supported")
    if not (parts[1].startswith(b"/") or parts[1] == b"*" or parts[1][:7].lower() == b"http://"
            or parts[1][:8].lower() == b"https://"):  # origin, asterisk or absolute form; never authority form
        raise _refuse(400, "malformed request line", "invalid_request_line")
    if parts[0] not in _METHODS:
        raise _refuse(405, f"method {parts[0][:32].decode('ascii')} is not allowed", "method_not_allowed")
    headers, lengths, encodings = [], set(), []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name) or any(c < 0x20 and c != 0x09 or c == 0x7f for c in value):
            raise _refuse(400, "malformed request header", "invalid_header")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            encodings += [v.strip().lower() for v in value.split(b",")]
        if name not in _DROPPED and name != b"content-length":  # sent once below, as the number read here
            headers.append((name, value))
    length = None
    if lengths:
        value = lengths.pop()
        if lengths or not value.isdigit() or len(value) > 18:
            raise _refuse(400, "invalid Content-Length", "invalid_content_length")
        length = int(value)
        headers.append((b"content-length", str(length).encode()))
    if encodings and encodings != [b"chunked"]:
        raise _refuse(501, "only Transfer-Encoding: chunked is accepted", "unsupported_transfer_encoding")
    if encodings and length is not None:
        raise _refuse(400, "Content-Length and Transfer-Encoding together", "invalid_content_length")
    return lines[0], headers, length, bool(encodings)


async def _copy_exact(reader, writer, n: int) -> None:
    while n > 0:
        data = await reader.read(min(_IO, n))
        if not data:
            raise ConnectionResetError
        n -= len(data)
        writer.write(data)
        await writer.drain()


def _bad_chunk(what: str) -> Refused:
    return _refuse(400, f"malformed chunked body: {what}", "invalid_chunked_body")


async def _copy_chunked(reader, writer, limits: Limits) -> None:
    """Forward one chunked body, chunk lines and trailers bounded and checked before they are forwarded (the
    stack behind answers bad framing in plain text); the body's total and deadline are the app's."""
    while True:
        try:
            line = await reader.readuntil(b"\r\n")  # the reader's limit bounds it
        except asyncio.LimitOverrunError:
            raise _bad_chunk("a chunk-size line over the limit") from None
        field = line[:-2].split(b";", 1)[0].strip(b" \t")
        if len(line) > _CHUNK_LINE or not _HEX.match(field):
            raise _bad_chunk("a bad chunk-size line")
        writer.write(line)
        size = int(field, 16)
        if size == 0:
            trailer = 0
            while True:
                try:
                    t = await reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError:
                    raise _bad_chunk("trailers over the limit") from None
                trailer += len(t)
                if trailer > limits.max_header_bytes:
                    raise _bad_chunk("trailers over the limit")
                writer.write(t)
                if t == b"\r\n":
                    await writer.drain()
                    return
        await _copy_exact(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise _bad_chunk("a chunk not followed by CRLF")
        writer.write(b"\r\n")


def free_loopback_port() -> int:
    """A port for the server behind the front (the kernel's pick; bound again at once by the caller)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client is still sending after a refusal, for a moment: closing with unread bytes
    makes the kernel reset the connection, and a client still sending would lose the reply to that reset."""
    while await reader.read(_IO):
        pass


class Front:
    """The listener in its own thread and event loop, so `wanrt serve`'s main thread stays free for signals."""

    def __init__(self, host: str, port: int, upstream_port: int, limits: Limits):
        self.host, self.port, self.upstream_port, self.limits = host, port, upstream_port, limits
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind now (a port in use is an error here, not in a thread) and serve in the background."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            if isinstance(e, socket.gaierror) or e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise BadInputError(f"--host {self.host} --port {self.port}: cannot listen there "
                                    f"({e.strerror or e}); choose another --port or --host") from None
            raise
        sock.listen(2048)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self._loop)

            async def serve():
                self._server = await asyncio.start_server(self._handle, sock=sock, limit=self.limits.max_header_bytes)
                ready.set()

            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="wanrt-front", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close():
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > self.limits.max_connections:
                raise _refuse(503, f"more than {self.limits.max_connections} open connections", "too_many_connections",
                              headers={"retry-after": "1"})
            await self._one_request(reader, writer)
        except Refused as r:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                writer.write(error_bytes(r.err))
                await asyncio.wait_for(writer.drain(), self.limits.header_timeout_s)
                await asyncio.wait_for(_discard(reader), 2.0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            pass  # the client or the upstream went away: the connection ends
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):  # closing a socket the peer already dropped
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _one_request(self, reader, writer) -> None:
        line, headers, length, chunked = parse_head(await read_head(reader, self.limits))
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream_port, limit=_IO), 5)
        except (OSError, asyncio.TimeoutError):
            raise _refuse(503, "the server is not accepting requests yet", "server_starting",
                          headers={"retry-after": "2"}) from None
        try:
            up_writer.write(line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
                            + b"connection: close\r\n\r\n")
            replied = asyncio.Event()
            back = asyncio.ensure_future(self._pipe_back(up_reader, writer, replied))
            try:
                if chunked:
                    await _copy_chunked(reader, up_writer, self.limits)
                elif length:
                    await _copy_exact(reader, up_writer, length)
                await up_writer.drain()
            except Refused:  # bad chunk framing: ours to answer unless the app already began its reply
                if replied.is_set():
                    return
                back.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await back
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                if back.done():  # the app answered before the whole body came (413, 408): that is the reply
                    return
                raise
            finally:
                if not back.done():
                    await back  # the upstream closes after its reply (Connection: close)
        finally:
            up_writer.close()

    async def _pipe_back(self, up_reader, writer, replied: asyncio.Event) -> None:
        # bounded like the slowest route (/v1/predict after its body); a stalled reader is dropped after body_timeout
        idle = self.limits.body_timeout_s + self.limits.predict_timeout_s + 30
        while True:
            data = await asyncio.wait_for(up_reader.read(_IO), idle)
            if not data:
                return
            replied.set()
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.limits.body_timeout_s)
