"""The engine's requests and responses, and the format in which their arrays travel to and from the engine service.

NumPy and the standard library only: the Slicer panel's process (which never imports torch) encodes requests and
decodes responses with it. The format is documented in docs/SERVICE.md; in short, a message is ONE zlib stream
(RFC 1950) of

    b"BDS1"                      4 bytes, the format and its version
    header length n              4 bytes, unsigned little-endian
    header                       n bytes of UTF-8 JSON: {"meta": {...}, "arrays": [{"name", "dtype", "shape"}, ...]}
    the arrays' bytes            each array's raw bytes in header order, C order, in its (little-endian) dtype

Only plain numeric and boolean dtypes are accepted (`DTYPES`), never objects: nothing is ever unpickled. Decoding
is bounded (`max_bytes`: the declared arrays, before any allocation, and the decompressed stream, so a small
compressed body cannot expand without limit) and incremental (`Decoder.feed`), and so is encoding (`Encoder`
yields compressed chunks of about `chunk` input bytes), so that a front end can move a volume a slice of time at a
time from its event loop. Every malformed message raises `FormatError` with one sentence saying what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import InputError

MAGIC = b"BDS1"
MEDIA_TYPE = "application/x-braindiffseg"
# little-endian (or byte-order free) numeric types: what label maps, images and probabilities need
DTYPES = frozenset(np.dtype(t).str for t in ("|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8",
                                               "<f2", "<f4", "<f8"))
MAX_HEADER = 1 << 20
MAX_NDIM = 8


class FormatError(InputError):
    """A message that is not in the format (truncated, corrupt, too large, unknown dtype, ...)."""


class TooLarge(FormatError):
    """A message that declares more than the receiver accepts."""


def images_digest(images: dict[str, np.ndarray]) -> str:
    """A digest of image arrays by role (names, dtypes, shapes and bytes): the identity of a volume, in the engine's
    feature cache and on the service."""
    steps = digest_steps(images)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def digest_steps(images: dict[str, np.ndarray], chunk: int = 1 << 22) -> Iterator[None]:
    """`images_digest` a `chunk` of bytes at a time: a generator that yields after each chunk and returns the digest
    (a front end's event loop hashes a large volume over several ticks).

    SHA-256: the CPUs' SHA extensions (AMD since 2017, Intel since 2019-2021) make it the fastest of hashlib's
    digests there: a BraTS volume's 143 MB in 0.08 s against BLAKE2b's 0.25 s on the 2-core AMD EPYC (CPUs without
    the extensions: about twice BLAKE2b's time). The digest is the volume's identity in one session (the service
    checks an upload against it), never stored."""
    h = hashlib.sha256()
    for role in sorted(images):
        a = np.ascontiguousarray(images[role])
        h.update(f"{role}:{a.dtype.str}:{a.shape}".encode())
        view = memoryview(a.reshape(-1)).cast("B")
        for start in range(0, len(view), chunk):
            h.update(view[start:start + chunk])
            yield
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ requests

@dataclass
class EngineRequest:
    """One job for the engine. kind: 'propagate' or 'inpaint'; meta: JSON values (options as strings, steps, ...);
    arrays: the job's own arrays (the annotation; the image and mask of an inpainting); volume: for 'propagate',
    the images by role, which the service keeps between jobs (its feature cache) and which travel only when the
    service does not have them yet (`digest`)."""

    kind: str
    meta: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    volume: dict | None = None
    _digest: str | None = field(default=None, repr=False)

    @property
    def digest(self) -> str | None:
        if self.volume is None:
            return None
        if self._digest is None:
            self._digest = images_digest(self.volume)
        return self._digest


@dataclass
class EngineResponse:
    """What a finished job returns: meta (JSON values: timings, device, messages, ...) and arrays."""

    meta: dict
    arrays: dict


# ------------------------------------------------------------------------------------------------ encoding

def _checked_arrays(arrays: dict) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.str not in DTYPES:
            little = a.dtype.newbyteorder("<")
            if a.dtype.kind in "biuf" and little.str in DTYPES:
                a = a.astype(little)
            else:
                raise FormatError(f"Array '{name}' has type {a.dtype}, which cannot be sent; use a numeric type.")
        out.append((str(name), a if a.flags.c_contiguous else a.copy(order="C")))  # (keeps 0-d arrays 0-d)
    return out


class Encoder:
    """A message as compressed chunks: `for chunk in Encoder(meta, arrays): ...`, or `bytes(encoder)`.

    `size` is the uncompressed size (for progress: `done` counts the input bytes compressed so far)."""

    def __init__(self, meta: dict, arrays: dict, level: int = 1, chunk: int = 1 << 20):
        self._arrays = _checked_arrays(arrays)
        header = json.dumps({"meta": meta, "arrays": [
            {"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in self._arrays]}).encode()
        if len(header) > MAX_HEADER:
            raise FormatError(f"The message header is {len(header)} bytes; at most {MAX_HEADER} are allowed.")
        self._head = MAGIC + struct.pack("<I", len(header)) + header
        self.level, self.chunk = level, max(1 << 12, int(chunk))
        self.size = len(self._head) + sum(a.nbytes for _, a in self._arrays)
        self.done = 0

    def __iter__(self) -> Iterator[bytes]:
        z = zlib.compressobj(self.level)
        self.done = 0
        pieces = [memoryview(self._head)] + [memoryview(a.reshape(-1)).cast("B") for _, a in self._arrays]
        for piece in pieces:
            for start in range(0, len(piece), self.chunk):
                part = piece[start:start + self.chunk]
                out = z.compress(part)
                self.done += len(part)
                if out:
                    yield out
        yield z.flush()

    def __bytes__(self) -> bytes:
        return b"".join(self)


def encode(meta: dict, arrays: dict, level: int = 1) -> bytes:
    """A whole message as bytes."""
    return bytes(Encoder(meta, arrays, level))


# ------------------------------------------------------------------------------------------------ decoding

class Decoder:
    """Decodes a message fed in pieces: `feed(data)` for every piece, then `finish()` -> (meta, arrays).

    max_bytes bounds the arrays the header declares (checked before allocating them) and so the whole
    decompressed stream. `fraction` is the share of the declared bytes received so far (0 before the header)."""

    STEP = 1 << 20  # decompressed bytes per step of an incremental decode

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._z = zlib.decompressobj()
        self._tail = b""  # compressed input not decoded yet
        self._buf = bytearray()  # before the arrays: magic, length, header
        self._meta = None
        self._specs: list = []  # (name, array, byte view)
        self._index = 0
        self._offset = 0
        self.total = 0  # bytes of the arrays
        self.received = 0

    @property
    def fraction(self) -> float:
        return self.received / self.total if self.total else (1.0 if self._meta is not None else 0.0)

    @property
    def complete(self) -> bool:
        return self._meta is not None and self._index == len(self._specs)

    def feed(self, data: bytes, deadline: float | None = None) -> None:
        """Decode `data`. With `deadline` (time.monotonic()), stop once it has passed, a slice of at most
        `STEP` decompressed bytes at a time, and keep the rest for `resume` (`pending` says whether any is left):
        a front end's event loop decodes a large result over several ticks."""
        if data:
            self._tail = self._tail + bytes(data) if self._tail else bytes(data)
        self.resume(deadline)

    @property
    def pending(self) -> bool:
        return bool(self._tail)

    def resume(self, deadline: float | None = None) -> None:
        if self._z.eof:
            if self._tail:
                raise FormatError("The message has data after its end.")
            return
        try:
            while self._tail:
                limit = min(self._want(), self.STEP)
                before = len(self._tail)
                out = self._z.decompress(self._tail, limit)
                self._tail = self._z.unconsumed_tail
                consumed = before - len(self._tail)
                self._take(out)
                if self._z.eof:
                    if self._z.unused_data or self._tail:
                        raise FormatError("The message has data after its end.")
                    break
                if not out and not consumed:
                    raise FormatError("The message is corrupt: its compressed data does not advance.")
                if deadline is not None and time.monotonic() >= deadline:
                    return
        except zlib.error as exc:
            raise FormatError(f"The message is not a compressed BrainDiffSeg message ({exc}).") from None

    def _want(self) -> int:
        """How many decompressed bytes to accept next (never more than the message still declares)."""
        if self._meta is None:
            if len(self._buf) < 8:
                return 8 - len(self._buf)
            n = struct.unpack("<I", bytes(self._buf[4:8]))[0]
            return 8 + n - len(self._buf)
        if self._index >= len(self._specs):
            return 1  # anything more is an error (reported by _take)
        return len(self._specs[self._index][2]) - self._offset

    def _take(self, out: bytes) -> None:
        view = memoryview(out)
        while len(view):
            if self._meta is None:
                need = self._want()
                self._buf += view[:need]
                view = view[need:]
                if len(self._buf) >= 4 and bytes(self._buf[:4]) != MAGIC:
                    raise FormatError("The message does not start with the BrainDiffSeg format mark 'BDS1'.")
                if len(self._buf) == 8:
                    n = struct.unpack("<I", bytes(self._buf[4:8]))[0]
                    if n > MAX_HEADER:
                        raise TooLarge(f"The message header declares {n} bytes; at most {MAX_HEADER} are allowed.")
                if len(self._buf) >= 8 and len(self._buf) == 8 + struct.unpack("<I", bytes(self._buf[4:8]))[0]:
                    self._parse_header(bytes(self._buf[8:]))
                continue
            if self._index >= len(self._specs):
                raise FormatError("The message has more data than its header declares.")
            name, array, target = self._specs[self._index]
            n = min(len(view), len(target) - self._offset)
            target[self._offset:self._offset + n] = view[:n]
            self._offset += n
            self.received += n
            view = view[n:]
            self._advance()

    def _advance(self) -> None:
        while self._index < len(self._specs) and self._offset == len(self._specs[self._index][2]):
            self._index += 1
            self._offset = 0

    def _parse_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise FormatError("The message header is not valid JSON.") from None
        if not isinstance(header, dict) or not isinstance(header.get("meta", {}), dict) \
                or not isinstance(header.get("arrays", []), list):
            raise FormatError("The message header must be an object with 'meta' (an object) and 'arrays' (a list).")
        specs, total, names = [], 0, set()
        for item in header.get("arrays", []):
            if not isinstance(item, dict):
                raise FormatError("Each array of the message header must be an object with name, dtype and shape.")
            name, dtype, shape = item.get("name"), item.get("dtype"), item.get("shape")
            if not isinstance(name, str) or not name or name in names:
                raise FormatError(f"Array name {name!r} in the message header is missing or repeated.")
            if dtype not in DTYPES:
                raise FormatError(f"Array '{name}' has type {dtype!r}; allowed: {', '.join(sorted(DTYPES))}.")
            if not isinstance(shape, list) or len(shape) > MAX_NDIM or \
                    not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
                raise FormatError(f"Array '{name}' has shape {shape!r}; give a list of at most {MAX_NDIM} sizes.")
            nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            total += nbytes
            if total > self.max_bytes:
                raise TooLarge(f"The message declares {total / 2**20:.0f} MB of arrays or more; this service "
                                  f"accepts at most {self.max_bytes / 2**20:.0f} MB.")
            names.add(name)
            specs.append((name, dtype, tuple(shape)))
        self._meta = header.get("meta", {})
        self.total = total
        for name, dtype, shape in specs:
            array = np.empty(shape, dtype=np.dtype(dtype))
            self._specs.append((name, array, memoryview(array.reshape(-1)).cast("B")))
        self._advance()

    def finish(self) -> tuple[dict, dict]:
        """(meta, arrays by name) of a complete message; FormatError when it is incomplete."""
        if self._meta is None:
            raise FormatError("The message ended before its header.")
        if not self.complete or not self._z.eof:
            missing = self.total - self.received
            raise FormatError(f"The message is truncated: {missing} bytes of its arrays are missing."
                              if missing else "The message is truncated: its compressed stream has no end.")
        return self._meta, {name: array for name, array, _ in self._specs}


def decode(data: bytes, max_bytes: int = 1 << 31) -> tuple[dict, dict]:
    """(meta, arrays) of a whole message."""
    decoder = Decoder(max_bytes)
    decoder.feed(data)
    return decoder.finish()
