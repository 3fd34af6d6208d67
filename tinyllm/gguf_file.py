"""GGUF, read through a memory map without copying the weights.

File layout (all integers little-endian):

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv       x  key (string) | value type u32 | value
    n_tensors  x  name (string) | n_dims u32 | ne[n_dims] u64 | ggml type u32 | offset u64
    padding to `general.alignment` (default 32)
    tensor data: each tensor at data_start + offset

A string is a u64 byte length followed by UTF-8 bytes.  An array is an element
type u32, a u64 count and the elements.  `ne` lists dimensions fastest-varying
first (ggml order), so a matrix with ne = [n_in, n_out] is stored as n_out rows
of n_in elements; numpy wants the reverse, shape (n_out, n_in).

Why not `gguf.GGUFReader`: it builds a numpy object for every field and every
array element, which takes ~12 s and ~770 MiB for Gemma 3's 262k-entry
vocabulary.  Here numeric arrays are numpy views over the map and strings are
decoded in one pass, so opening a model costs well under a second.  We still use
the `gguf` package for the type constants and block sizes.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
from .ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import TinyLLMError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# metadata value type id -> (struct format, numpy dtype) for the fixed-size scalars
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    ggml_type: int          # a gguf.GGMLQuantizationType value
    ne: tuple               # dimensions, ggml order (fastest first)
    offset: int             # byte offset from the start of the data section
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))


class GGUFFile:
    """An open GGUF file: `metadata` (dict), `tensors` (name -> TensorInfo), `tensor(name)`."""

    def __init__(self, path: str):
        self.path = str(path)
        try:
            self.file_size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                if self.file_size == 0:
                    raise TinyLLMError(f"{self.path}: empty file, not a GGUF model")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise TinyLLMError(f"model file not found: {self.path}") from None
        except IsADirectoryError:
            raise TinyLLMError(f"{self.path} is a directory, not a GGUF file") from None
        except PermissionError:
            raise TinyLLMError(f"{self.path}: permission denied") from None
        # The whole file as uint8; tensors are views (slices + .view) into it.
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self.metadata: dict = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError) as e:
            raise TinyLLMError(f"{self.path}: corrupt or truncated GGUF header ({e})") from None

    # ---- header parsing ---------------------------------------------------------------
    def _parse(self) -> None:
        buf, end = self._map, self.file_size
        if buf[:4] != GGUF_MAGIC:
            raise TinyLLMError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        self.version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if self.version not in (2, 3):
            raise TinyLLMError(f"{self.path}: unsupported GGUF version {self.version} (need 2 or 3)")
        pos = 24
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            value, pos = self._value(vtype, pos + 4)
            self.metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            if n_dims > 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            ne = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, ggml_type, tuple(int(n) for n in ne), offset))
        self.alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        self.data_start = -(-pos // self.alignment) * self.alignment
        for name, ggml_type, ne, offset in infos:
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise TinyLLMError(
                    f"{self.path}: tensor {name!r} has unknown ggml type id {ggml_type}") from None
            n_el = int(np.prod(ne, dtype=np.int64))
            if ne[0] % block_size:
                raise TinyLLMError(f"{self.path}: tensor {name!r} row of {ne[0]} is not a "
                                   f"multiple of its block size {block_size}")
            n_bytes = n_el // block_size * type_size
            if self.data_start + offset + n_bytes > end:
                raise TinyLLMError(
                    f"{self.path}: truncated file: tensor {name!r} ends at byte "
                    f"{self.data_start + offset + n_bytes:,} but the file has {end:,} bytes")
            self.tensors[name] = TensorInfo(name, ggml_type, ne, offset, n_bytes)

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._map, pos)
        if pos + 8 + n > self.file_size:
            raise ValueError("string runs past end of file")
        return self._map[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n

    def _value(self, vtype: int, pos: int):
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            return struct.unpack_from(fmt, self._map, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos)
        if vtype == _ARRAY:
            etype, n = struct.unpack_from("<IQ", self._map, pos)
            pos += 12
            if etype in _SCALARS:
                # Numeric arrays (token scores, token types, per-layer head counts):
                # a read-only numpy view, no copy.
                dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
                nbytes = n * dtype.itemsize
                if pos + nbytes > self.file_size:
                    raise ValueError("array runs past end of file")
                return np.frombuffer(self._map, dtype=dtype, count=n, offset=pos), pos + nbytes
            if etype == _STRING:
                return self._string_array(pos, n)
            out = []
            for _ in range(n):  # arrays of arrays: rare, keep it simple
                v, pos = self._value(etype, pos)
                out.append(v)
            return out, pos
        raise ValueError(f"unknown metadata value type {vtype}")

    def _string_array(self, pos: int, n: int) -> tuple[list, int]:
        # The vocabulary: up to 262k strings.  Slicing the mmap once per string
        # and decoding is the cheapest thing Python can do here.
        buf, unpack, out = self._map, struct.unpack_from, [None] * n
        for i in range(n):
            (k,) = unpack("<Q", buf, pos)
            pos += 8
            out[i] = buf[pos:pos + k].decode("utf-8", errors="replace")
            pos += k
        if pos > self.file_size:
            raise ValueError("string array runs past end of file")
        return out, pos

    # ---- tensor access ----------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 view, shape (rows, bytes_per_row) — zero-copy."""
        t = self.tensors[name]
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
        row_bytes = t.ne[0] // block_size * type_size
        start = self.data_start + t.offset
        flat = self._bytes[start:start + t.n_bytes]
        return flat.reshape(-1, row_bytes)

    def tensor(self, name: str) -> np.ndarray:
        """F32/F16 tensors as typed numpy views in numpy order (reversed ne)."""
        t = self.tensors[name]
        dtype = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}.get(
            GGMLQuantizationType(t.ggml_type))
        if dtype is None:
            raise TypeError(f"{name} is {t.type_name}; use raw() and a dequantizer")
        start = self.data_start + t.offset
        return self._bytes[start:start + t.n_bytes].view(dtype).reshape(t.ne[::-1])

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def close(self) -> None:
        self._bytes = None
        try:
            self._map.close()
        except BufferError:
            pass  # numpy views still alive; the map closes when they are collected
