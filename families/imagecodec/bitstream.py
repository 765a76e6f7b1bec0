"""The self-describing bitstream container.

Layout (little endian):
  magic "HPCM" | format version u8 | name length u8 | model name utf-8 | model hash 8 bytes |
  image height u32 | image width u32 | substream lengths u32 (z, y, escapes, hints, filter) |
  the substreams | CRC-32 of everything before it (u32).
Format 2 added the `filter` substream (the adaptive loop filter, empty when the encoder sent none); format 1
streams (four substreams, no filter) are still read, so streams stored before it stay decodable.
`StreamHeader.peek` reads the header alone (microseconds, fit for the event loop: model selection and the
size checks); `Bitstream.parse` adds the checksum over the whole stream and slices the substreams. Both run
before any network, so truncated or corrupted streams fail fast and cheaply.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"HPCM"
FORMAT_VERSION = 2  # the version written
READABLE_VERSIONS = (1, 2)
HASH_BYTES = 8
SUBSTREAMS = ("z", "y", "escapes", "hints", "filter")
_SUBSTREAM_COUNT = {1: 4, 2: 5}  # format version -> substreams it carries (a prefix of SUBSTREAMS)
_FIXED = {v: struct.Struct(f"<II{n}I") for v, n in _SUBSTREAM_COUNT.items()}  # height, width, lengths


class BitstreamError(ValueError):
    """A stream that cannot be decoded; `kind` says why (truncated, corrupted, version, model)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Bitstream:
    model_name: str
    model_hash: bytes  # HASH_BYTES
    height: int
    width: int
    z: bytes
    y: bytes
    escapes: bytes
    hints: bytes
    filter: bytes = b""
    format_version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        name = self.model_name.encode()
        if len(name) > 255 or len(self.model_hash) != HASH_BYTES:
            raise ValueError("model name too long or hash of the wrong size")
        if self.format_version not in READABLE_VERSIONS or (self.format_version == 1 and self.filter):
            raise ValueError(f"format version {self.format_version} cannot carry these substreams")
        parts = [getattr(self, key) for key in SUBSTREAMS[:_SUBSTREAM_COUNT[self.format_version]]]
        body = b"".join([
            MAGIC, bytes([self.format_version, len(name)]), name, self.model_hash,
            _FIXED[self.format_version].pack(self.height, self.width, *(len(p) for p in parts)), *parts,
        ])
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def parse(cls, data: bytes) -> Bitstream:
        """Validate the header, the lengths and the checksum, then slice the substreams out."""
        header = StreamHeader.peek(data)
        if zlib.crc32(memoryview(data)[: len(data) - 4]) != header.crc:
            raise BitstreamError("corrupted", "bitstream checksum mismatch (corrupted data)")
        parts = {}
        offset = header.payload_offset
        for key, length in zip(SUBSTREAMS, header.lengths, strict=True):
            parts[key] = data[offset:offset + length]
            offset += length
        return cls(model_name=header.model_name, model_hash=header.model_hash, height=header.height,
                   width=header.width, format_version=header.format_version, **parts)


@dataclass(frozen=True)
class StreamHeader:
    """The fixed-size front of a stream: enough to pick the model and refuse impossible streams before
    the checksum or any substream is touched (microseconds, independent of the stream's length)."""

    format_version: int
    model_name: str
    model_hash: bytes
    height: int
    width: int
    lengths: tuple[int, int, int, int, int]  # z, y, escapes, hints, filter (0 in format 1)
    payload_offset: int
    crc: int

    def length(self, substream: str) -> int:
        return self.lengths[SUBSTREAMS.index(substream)]

    @classmethod
    def peek(cls, data: bytes) -> StreamHeader:
        if len(data) < 4 or data[:4] != MAGIC:
            raise BitstreamError("corrupted", "not an HPCM image bitstream (bad magic bytes)")
        if len(data) < 6:
            raise BitstreamError("truncated", "bitstream truncated inside the header")
        version, name_len = data[4], data[5]
        if version not in READABLE_VERSIONS:
            raise BitstreamError("version", f"bitstream format version {version} is not supported (this service "
                                 f"reads {', '.join(map(str, READABLE_VERSIONS))})")
        fixed = _FIXED[version]
        offset = 6
        header_end = offset + name_len + HASH_BYTES + fixed.size
        if len(data) < header_end + 4:
            raise BitstreamError("truncated", "bitstream truncated inside the header")
        try:
            name = bytes(data[offset:offset + name_len]).decode()
        except UnicodeDecodeError:
            raise BitstreamError("corrupted", "bitstream header is corrupted (model name)") from None
        offset += name_len
        model_hash = bytes(data[offset:offset + HASH_BYTES])
        offset += HASH_BYTES
        height, width, *lengths = fixed.unpack_from(data, offset)
        lengths += [0] * (len(SUBSTREAMS) - len(lengths))
        offset += fixed.size
        expected = offset + sum(lengths) + 4
        if len(data) < expected:
            raise BitstreamError("truncated", f"bitstream truncated: {len(data)} bytes, header announces {expected}")
        if len(data) > expected:
            raise BitstreamError("corrupted", f"bitstream has {len(data) - expected} trailing bytes")
        (crc,) = struct.unpack_from("<I", data, expected - 4)
        return cls(format_version=version, model_name=name, model_hash=model_hash, height=height, width=width,
                   lengths=tuple(lengths), payload_offset=offset, crc=crc)
