"""The MLLP listener: HL7 v2 messages over TCP, one thread per connection.

The Minimal Lower Layer Protocol (HL7 v2.5 Appendix C.4; HL7 Transport
Specification: MLLP, Release 2) frames each message as a block::

    <VT 0x0B> message <FS 0x1C><CR 0x0D>

and a connection carries any number of blocks, each answered, in order, by
the block of its acknowledgement. What this listener does with the bytes:

* bytes outside a block (before a start byte) are discarded, as MLLP R2
  tells a receiver to do, and counted in a debug line;
* a start byte inside a block starts the block anew (the sender gave up on
  the first one: a message never holds a VT);
* a block longer than ``max_message_bytes`` is read to its end without
  being kept (its first bytes are, to answer it) and answered AR, so that a
  sender that means no harm learns why and the connection stays in step;
* a connection silent for ``idle_timeout`` seconds is closed.

The acknowledgement is the HL7 original-mode ACK (HL7 v2.5 2.9.2) made by
:class:`~pipeline.worklist.hl7.HL7Intake`: it is sent only once the change
is committed, so it is also the commit acknowledgement, and MLLP R2's own
ACK/NAK byte blocks are not sent (a sender speaking R1, nearly all, would
take them for a broken answer).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Frame", "FrameReader", "MLLPServer", "frame"]

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
#: How much of an oversize block is kept: enough for its MSH, to answer it.
_HEAD = 4096


def frame(message: bytes) -> bytes:
    """``message`` as one MLLP block."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Frame:
    """The content of one block; ``oversize``: only its first bytes, of ``size``."""

    data: bytes
    size: int
    oversize: bool = False


class FrameReader:
    """Split a byte stream into MLLP blocks (HL7 v2.5 C.4.2), whatever the chunking.

    Parameters
    ----------
    max_bytes
        Longest content kept; a longer block becomes an ``oversize`` frame
        holding only its first bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.discarded = 0
        self._inside = False
        self._fs_pending = False
        self._buf = bytearray()
        self._size = 0
        self._oversize = False

    def feed(self, chunk: bytes) -> list[Frame]:
        """The blocks that ``chunk`` completes."""
        frames: list[Frame] = []
        pos, n = 0, len(chunk)
        while pos < n:
            if not self._inside:
                start = chunk.find(START_BLOCK, pos)
                if start < 0:
                    self.discarded += n - pos
                    break
                self.discarded += start - pos
                self._begin()
                pos = start + 1
                continue
            if self._fs_pending:
                # The previous chunk ended on FS: a CR now ends the block.
                self._fs_pending = False
                if chunk[pos : pos + 1] == CARRIAGE_RETURN:
                    frames.append(self._end())
                    pos += 1
                    continue
                self._add(END_BLOCK)  # a lone FS is content (and will be refused)
            end = chunk.find(END_BLOCK, pos)
            stop = n if end < 0 else end
            restart = chunk.find(START_BLOCK, pos, stop)
            if restart >= 0:
                self.discarded += self._size + (restart - pos) + 1
                self._begin()
                pos = restart + 1
                continue
            self._add(chunk[pos:stop])
            if end < 0:
                break
            pos = end + 1
            if pos == n:
                self._fs_pending = True
            elif chunk[pos : pos + 1] == CARRIAGE_RETURN:
                frames.append(self._end())
                pos += 1
            else:
                self._add(END_BLOCK)
        return frames

    def _begin(self) -> None:
        self._inside = True
        self._fs_pending = False
        self._buf = bytearray()
        self._size = 0
        self._oversize = False

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if not self._oversize and self._size > self.max_bytes:
            self._oversize = True
            self._buf += data
            del self._buf[_HEAD:]
        elif self._oversize:
            if len(self._buf) < _HEAD:
                self._buf += data[: _HEAD - len(self._buf)]
        else:
            self._buf += data

    def _end(self) -> Frame:
        self._inside = False
        found = Frame(bytes(self._buf), self._size, self._oversize)
        self._buf = bytearray()
        return found


#: handle(content, peer address) -> the answer's content.
Handler = Callable[[bytes, str], bytes]
#: reject(first bytes, limit, peer address) -> the answer's content.
OversizeHandler = Callable[[bytes, int, str], bytes]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], listener: MLLPServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = listener
        super().__init__(address, _Connection)


class _Connection(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        listener: MLLPServer = self.server.listener  # type: ignore[attr-defined]
        listener._serve(self.request, self.client_address[0])


class MLLPServer:
    """A threaded TCP server speaking MLLP.

    Parameters
    ----------
    handle
        Answers one message (:meth:`HL7Intake.handle`).
    reject_oversize
        Answers a message over ``max_message_bytes`` (:meth:`HL7Intake.reject_oversize`).
    host, port
        Where to listen (port 0: any free port, see :attr:`address`).
    max_message_bytes
        Longest message read.
    idle_timeout
        Seconds of silence after which a connection is closed.
    max_connections
        Connections served at once; one more is closed at once.
    """

    def __init__(
        self,
        handle: Handler,
        reject_oversize: OversizeHandler,
        host: str,
        port: int,
        *,
        max_message_bytes: int = 1024**2,
        idle_timeout: float = 300.0,
        max_connections: int = 64,
    ) -> None:
        self.handle = handle
        self.reject_oversize = reject_oversize
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for HL7 on {host}:{port}: {exc.strerror}")
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MLLPServer:
        """Accept connections on a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="hl7-mllp", daemon=True,
        )
        self._thread.start()
        log.info("HL7 MLLP listener on %s:%d", *self.address)
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections, release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server.server_close()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("HL7 connection from %s refused: %d connections open", peer, len(self._open))
            return
        with self._lock:
            self._open.add(sock)
        reader = FrameReader(self.max_message_bytes)
        try:
            sock.settimeout(self.idle_timeout)
            while True:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                for block in reader.feed(chunk):
                    if block.oversize:
                        answer = self.reject_oversize(block.data, self.max_message_bytes, peer)
                    else:
                        answer = self.handle(block.data, peer)
                    try:
                        sock.sendall(frame(answer))
                    except OSError:
                        return
        finally:
            if reader.discarded:
                log.debug("HL7 connection from %s: %d bytes outside blocks discarded",
                          peer, reader.discarded)
            with self._lock:
                self._open.discard(sock)
            self._slots.release()
