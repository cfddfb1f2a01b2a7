"""The engine service's client: HTTP/1.1 exchanges that a front end advances a slice of time at a time from its own
event loop, never blocking it and never needing a thread.

Why not a thread or a blocking HTTP library: in the Slicer application the main thread holds Python's GIL while Qt
is idle, so a client thread there barely runs (Testing/Python/test_slicer_event_loop.py measures it), and a blocking
upload of a BraTS volume over a slow link would freeze the panel. So the socket is non-blocking (TLS included),
h11 (the sans-I/O HTTP/1.1 library under uvicorn) does the protocol, and `Exchange.advance(deadline)` moves bytes,
compresses and decompresses (`BrainDiffSegLib.transfer`) until the deadline or until the socket would block.

Standard library, NumPy and h11 only (no torch): the Slicer panel's process imports this.
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

try:
    import h11
except ImportError:  # the panel's module still loads; the client says what is missing when it is used
    h11 = None

from BrainDiffSegLib.errors import BrainDiffSegError
from BrainDiffSegLib.transfer import MEDIA_TYPE, Decoder, Encoder

log = logging.getLogger(__name__)
SEND_WINDOW = 1 << 18  # bytes queued for the socket before more are compressed
RECV_SIZE = 1 << 18
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, getattr(errno, "WSAEWOULDBLOCK", 10035)}


class ServiceError(BrainDiffSegError):
    """The engine service could not be reached, dropped the connection or answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServiceUnavailable(ServiceError):
    """No connection to the service (refused, reset, closed, timed out): it is not running or has died."""


@dataclass(frozen=True)
class Endpoint:
    """Where a service listens and how to authenticate: `url` http(s)://host:port, the bearer `token`, and for
    https a CA file (`cafile`; default: the system's certificates) to trust a self-signed certificate."""

    url: str
    token: str
    cafile: str | None = None
    timeout: float = 60.0  # seconds without progress before an exchange fails

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(f"'{self.url}' is not a service address; write it as https://HOST:PORT (or "
                               "http://127.0.0.1:PORT on this computer).")
        if not self.token:
            raise ServiceError(f"No token for the service at {self.url}: the service prints its token when it "
                               "starts (or set one with --token).")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"


class Connection:
    """A keep-alive HTTP/1.1 connection on a non-blocking socket, opened on first use (`Exchange` drives it)."""

    def __init__(self, endpoint: Endpoint):
        if h11 is None:
            raise ServiceError("The engine service's client needs the Python package h11, which is not installed "
                               "(pip install h11; the module's first Propagate offers to install it).")
        self.endpoint = endpoint
        self.sock = None
        self.h11 = None
        self._state = "closed"  # closed -> connecting -> handshake -> ready

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.h11, self._state = None, None, "closed"

    def _fail(self, what: str, exc: BaseException | None = None) -> ServiceUnavailable:
        self.close()
        reason = f": {exc.strerror or exc}" if isinstance(exc, OSError) else (f": {exc}" if exc else "")
        return ServiceUnavailable(f"{what} the engine service at {self.endpoint.url}{reason}")

    def ready(self) -> bool:
        """Advance the connection set-up without blocking; True once requests can be sent."""
        if self._state == "ready":
            return True
        if self._state == "closed":
            try:
                info = socket.getaddrinfo(self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM)[0]
                self.sock = socket.socket(info[0], info[1], info[2])
                self.sock.setblocking(False)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = self.sock.connect_ex(info[4])
            except OSError as exc:
                raise self._fail("Cannot reach", exc) from None
            if code not in (0, *_IN_PROGRESS):
                raise self._fail("Cannot reach", OSError(code, errno.errorcode.get(code, str(code)).lower()
                                                         .replace("econnrefused", "connection refused")))
            self._state = "connecting"
        if self._state == "connecting":
            try:
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, "connection refused" if code == errno.ECONNREFUSED else str(code))
                self.sock.getpeername()  # raises while the connection is still being made
            except OSError as exc:
                if exc.errno in (errno.ENOTCONN, *_IN_PROGRESS):
                    return False
                raise self._fail("Cannot reach", exc) from None
            if self.endpoint.tls:
                context = ssl.create_default_context(cafile=self.endpoint.cafile)
                self.sock = context.wrap_socket(self.sock, server_hostname=self.endpoint.host,
                                                do_handshake_on_connect=False)
                self._state = "handshake"
            else:
                self._state = "ready"
        if self._state == "handshake":
            try:
                self.sock.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise ServiceError(f"The certificate of {self.endpoint.url} is not trusted ({exc.verify_message}): "
                                   "give the server's CA certificate (Advanced: certificate file).") from None
            except (ssl.SSLError, OSError) as exc:
                raise self._fail("TLS with", exc) from None
            self._state = "ready"
        if self._state == "ready" and self.h11 is None:
            self.h11 = h11.Connection(our_role=h11.CLIENT)
        return self._state == "ready"

    def send(self, data) -> int:
        """Bytes sent (0 when the socket would block); -1 when the peer stopped reading (its answer may still be
        readable: a service refusing an oversized upload answers, then closes)."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (BrokenPipeError, ConnectionResetError):
            return -1
        except OSError as exc:
            raise self._fail("Lost the connection to", exc) from None

    def recv(self) -> bytes | None:
        """Received bytes; None when nothing is available now; b'' when the peer closed."""
        try:
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError as exc:
            raise self._fail("Lost the connection to", exc) from None


class Exchange:
    """One request and its response, advanced by `advance(deadline)` (returns True once complete).

    body: bytes, an `Encoder` (sent as it is compressed, chunked) or None. With `decoder`, a 200 response in the
    message format is decoded as it arrives (`decoder.finish()` afterwards); other responses are read as JSON
    (`json`). `sent_fraction` / `received_fraction` report progress. Errors raise ServiceError."""

    def __init__(self, connection: Connection, method: str, path: str, body=None, decoder: Decoder | None = None):
        self.conn, self.method, self.path = connection, method, path
        self.body, self.decoder = body, decoder
        self.status: int | None = None
        self.headers: dict = {}
        self.json = None
        self._raw = bytearray()
        self._out = bytearray()
        self._chunks = iter(body) if isinstance(body, Encoder) else None
        self._started = False
        self._sent_body = False
        self._done = False
        self._last = time.monotonic()
        self._broken = False
        self._ended = False  # the whole response arrived (its body may still be being decoded)
        self._deadline = None

    @property
    def sent_fraction(self) -> float:
        if isinstance(self.body, Encoder):
            return self.body.done / self.body.size if self.body.size else 1.0
        return 1.0 if self._sent_body else 0.0

    @property
    def received_fraction(self) -> float:
        if self.decoder is not None and self.status == 200:
            return self.decoder.fraction
        return 1.0 if self._done else 0.0

    def _request(self) -> None:
        e = self.conn.endpoint
        headers = [("Host", f"{e.host}:{e.port}"), ("Authorization", f"Bearer {e.token}"),
                   ("Accept", f"application/json, {MEDIA_TYPE}")]
        if self.body is None:
            headers.append(("Content-Length", "0"))
        elif isinstance(self.body, Encoder):
            headers += [("Content-Type", MEDIA_TYPE), ("Transfer-Encoding", "chunked")]
        else:
            headers += [("Content-Type", MEDIA_TYPE), ("Content-Length", str(len(self.body)))]
        self._out += self.conn.h11.send(h11.Request(method=self.method, target=self.path, headers=headers))
        if isinstance(self.body, (bytes, bytearray)):
            self._out += self.conn.h11.send(h11.Data(data=bytes(self.body)))
        if not isinstance(self.body, Encoder):
            self._out += self.conn.h11.send(h11.EndOfMessage())
            self._sent_body = True
        self._started = True

    def advance(self, deadline: float) -> bool:
        """Do what can be done without blocking until `deadline` (time.monotonic()); True when complete."""
        if self._done:
            return True
        self._deadline = deadline
        while True:
            progressed = False
            if not self._started:
                if not self.conn.ready():
                    self._check_stall()
                    return False
                self._request()
                progressed = True
            # fill the send window from the body as it is compressed
            while not self._sent_body and not self._broken and len(self._out) < SEND_WINDOW \
                    and time.monotonic() < deadline:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._out += self.conn.h11.send(h11.EndOfMessage())
                    self._sent_body = True
                elif chunk:
                    self._out += self.conn.h11.send(h11.Data(data=chunk))
                progressed = True
            if self._out and not self._broken:
                n = self.conn.send(self._out)
                if n < 0:  # the service stopped reading: read its answer, if it gave one
                    self._broken = True
                elif n:
                    del self._out[:n]
                    progressed = True
            if self.decoder is not None and self.decoder.pending:  # decode what came, a slice at a time
                self.decoder.resume(deadline)
                progressed = True
                if self.decoder.pending:
                    return False
            if self._ended:
                self._finish()
                return True
            if self.decoder is not None and self.decoder.pending:
                return False
            try:
                data = self.conn.recv()
            except ServiceUnavailable:
                if self._broken and self.status is None:
                    raise self.conn._fail("The connection was closed by") from None
                raise
            if data is not None:
                self.conn.h11.receive_data(data)
                progressed = self._events() or progressed or data == b""
                if self._ended and not (self.decoder is not None and self.decoder.pending):
                    self._finish()
                    return True
                if data == b"" and not self._ended:
                    raise self.conn._fail("The connection was closed by")
            if progressed:
                self._last = time.monotonic()
            else:
                self._check_stall()
            if time.monotonic() >= deadline or not progressed:
                return False

    def _check_stall(self) -> None:
        if time.monotonic() - self._last > self.conn.endpoint.timeout:
            self.conn.close()
            raise ServiceUnavailable(f"No answer from the engine service at {self.conn.endpoint.url} within "
                                     f"{self.conn.endpoint.timeout:.0f} s.")

    def _events(self) -> bool:
        progressed = False
        h = self.conn.h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise self.conn._fail("Bad HTTP from", exc) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return progressed
            progressed = True
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                if self._decoding():
                    self.decoder.feed(bytes(event.data), self._deadline)
                else:
                    self._raw += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                return True
            elif isinstance(event, h11.ConnectionClosed):
                raise self.conn._fail("The connection was closed by")

    def _decoding(self) -> bool:
        return self.decoder is not None and self.status == 200 and \
            self.headers.get("content-type", "").startswith(MEDIA_TYPE)

    def _finish(self) -> None:
        self._done = True
        h = self.conn.h11
        if not self._sent_body:  # the server answered before the whole body was sent (e.g. 413): reconnect later
            self.conn.close()
        elif h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
        else:
            self.conn.close()
        if self._raw:
            try:
                self.json = json.loads(self._raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.json = {"detail": self._raw[:300].decode("utf-8", "replace")}
        if self.status is not None and self.status >= 400:
            detail = self.json.get("detail") if isinstance(self.json, dict) else None
            if self.status == 401:
                raise ServiceError(f"The engine service at {self.conn.endpoint.url} refused the token (401): give "
                                   "the token it printed when it started.", 401)
            if isinstance(detail, list):  # FastAPI's validation errors
                detail = "; ".join(str(d.get("msg", d)) for d in detail)
            raise ServiceError(str(detail or f"The engine service answered {self.status}."), self.status)


def request(endpoint: Endpoint, method: str, path: str, body=None, timeout: float = 10.0, decoder=None) -> Exchange:
    """A whole exchange, blocking up to `timeout` seconds (scripts, tests and short calls such as stopping the
    service; a front end's loop uses `Exchange.advance` instead)."""
    conn = Connection(Endpoint(endpoint.url, endpoint.token, endpoint.cafile, timeout))
    exchange = Exchange(conn, method, path, body, decoder)
    end = time.monotonic() + timeout
    try:
        while not exchange.advance(time.monotonic() + 0.05):
            if time.monotonic() > end:
                raise ServiceUnavailable(f"No answer from the engine service at {endpoint.url} within {timeout:.0f} s.")
            time.sleep(0.002)
    finally:
        conn.close()
    return exchange
