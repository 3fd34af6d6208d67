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
# The header (metadata + tensor infos) of the largest real models is under 10 MB:
# Gemma 3's 262k-token vocabulary makes 6.5 MB.  A header that claims more is refused,
# which bounds what parsing can cost whatever the counts in it say (32 MiB of header
# is at most 4M strings: about a second of Python and 32 MiB of list).
MAX_HEADER_BYTES = 32 * 2**20

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
        except OSError as e:
            # mmap fails with ENOMEM under `ulimit -v` (RLIMIT_AS) smaller than the file
            raise TinyLLMError(f"{self.path}: cannot map the file into memory: {e.strerror or e} "
                               f"(is `ulimit -v` lower than the file's {self.file_size / 2**20:,.0f} MiB?)"
                               ) from None
        # The whole file as uint8; tensors are views (slices + .view) into it.
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self.metadata: dict = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except TinyLLMError:
            self.close()
            raise

    # ---- header parsing ---------------------------------------------------------------
    #
    # The header comes from a downloaded file, so nothing it claims is trusted: every
    # count and length is checked against the bytes that remain *before* anything is
    # allocated or looped over.  Each element of the header takes at least one byte
    # (a string at least its 8-byte length, a key/value pair at least 8 + 4 + 1), so a
    # count larger than remaining_bytes / min_size is a lie and is refused at once.
    # That keeps the parse linear in the header's real size: a file cannot make us
    # allocate or loop for what it only claims to hold.

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.file_size:
            raise TinyLLMError(
                f"{self.path}: corrupt or truncated GGUF header: {what} needs {n:,} bytes at "
                f"offset {pos:,} but the file has {self.file_size:,}")
        if pos + n > MAX_HEADER_BYTES:
            raise TinyLLMError(
                f"{self.path}: corrupt GGUF header: {what} ({n:,} bytes at offset {pos:,}) would make "
                f"the header larger than {MAX_HEADER_BYTES // 2**20} MiB (real ones are under 10 MB)")

    def _count(self, pos: int, n: int, min_size: int, what: str) -> None:
        """Refuse a count of n elements, each at least min_size bytes, that cannot fit."""
        room = min(self.file_size, MAX_HEADER_BYTES) - pos
        if n * min_size > room:
            where = ("in the file" if self.file_size <= MAX_HEADER_BYTES else
                     f"of the {MAX_HEADER_BYTES // 2**20} MiB a header may take (real ones are under 10 MB)")
            raise TinyLLMError(
                f"{self.path}: corrupt GGUF header: {what} claims {n:,} entries of at least "
                f"{min_size} bytes, but only {max(room, 0):,} bytes remain {where}")

    def _unpack(self, fmt: str, pos: int, what: str):
        self._need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self._map, pos)

    def _parse(self) -> None:
        buf, end = self._map, self.file_size
        if buf[:4] != GGUF_MAGIC:
            raise TinyLLMError(f"{self.path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        self.version, n_tensors, n_kv = self._unpack("<IQQ", 4, "the file header")
        if self.version not in (2, 3):
            raise TinyLLMError(f"{self.path}: unsupported GGUF version {self.version} (need 2 or 3)")
        pos = 24
        # a key/value pair: key length (8) + value type (4) + at least one byte of value
        self._count(pos, n_kv, 13, "the metadata count")
        for _ in range(n_kv):
            key, pos = self._string(pos, "a metadata key")
            if key in self.metadata:
                raise TinyLLMError(f"{self.path}: corrupt GGUF header: metadata key {key!r} appears twice")
            (vtype,) = self._unpack("<I", pos, f"the type of {key!r}")
            value, pos = self._value(vtype, pos + 4, key)
            self.metadata[key] = value
        # a tensor info: name length (8) + n_dims (4) + one dimension (8) + type (4) + offset (8)
        self._count(pos, n_tensors, 32, "the tensor count")
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos, "a tensor name")
            (n_dims,) = self._unpack("<I", pos, f"tensor {name!r}")
            if not 1 <= n_dims <= 4:            # ggml tensors have 1 to 4 dimensions
                raise TinyLLMError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (1 to 4 allowed)")
            ne = self._unpack(f"<{n_dims}Q", pos + 4, f"tensor {name!r}")
            ggml_type, offset = self._unpack("<IQ", pos + 4 + 8 * n_dims, f"tensor {name!r}")
            pos += 4 + 8 * n_dims + 12
            infos.append((name, ggml_type, tuple(int(n) for n in ne), offset))
        self.alignment = self._alignment()
        self.data_start = -(-pos // self.alignment) * self.alignment
        for name, ggml_type, ne, offset in infos:
            self.tensors[name] = self._tensor_info(name, ggml_type, ne, offset)
        self._check_layout()

    def _alignment(self) -> int:
        # general.alignment must be a positive power of two: data_start and every tensor
        # offset are multiples of it, and the kernels rely on aligned rows.
        a = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(a, bool) or not isinstance(a, int) or a <= 0 or a & (a - 1):
            raise TinyLLMError(f"{self.path}: general.alignment must be a positive power of two "
                               f"integer, got {a!r}")
        return a

    def _tensor_info(self, name: str, ggml_type: int, ne: tuple, offset: int) -> TensorInfo:
        if name in self.tensors:
            raise TinyLLMError(f"{self.path}: tensor name {name!r} appears twice")
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise TinyLLMError(
                f"{self.path}: tensor {name!r} has unknown ggml type id {ggml_type}") from None
        if min(ne) <= 0:
            raise TinyLLMError(f"{self.path}: tensor {name!r} has a zero dimension {list(ne)}")
        if ne[0] % block_size:
            raise TinyLLMError(f"{self.path}: tensor {name!r} row of {ne[0]} is not a "
                               f"multiple of its block size {block_size}")
        n_el = 1
        for n in ne:                    # Python ints: no int64 overflow on absurd dims
            n_el *= n
        n_bytes = n_el // block_size * type_size
        if offset % self.alignment:
            raise TinyLLMError(f"{self.path}: tensor {name!r} offset {offset:,} is not a multiple "
                               f"of the alignment {self.alignment}")
        if self.data_start + offset + n_bytes > self.file_size:
            raise TinyLLMError(
                f"{self.path}: truncated file: tensor {name!r} ends at byte "
                f"{self.data_start + offset + n_bytes:,} but the file has {self.file_size:,} bytes")
        return TensorInfo(name, ggml_type, ne, offset, n_bytes)

    def _check_layout(self) -> None:
        """No two tensors share bytes: in offset order, each ends before the next begins."""
        prev = None
        for t in sorted(self.tensors.values(), key=lambda t: t.offset):
            if prev is not None and t.offset < prev.offset + prev.n_bytes:
                raise TinyLLMError(f"{self.path}: tensors {prev.name!r} and {t.name!r} overlap "
                                   f"(offsets {prev.offset:,} + {prev.n_bytes:,} bytes and {t.offset:,})")
            prev = t

    def _string(self, pos: int, what: str = "a string") -> tuple[str, int]:
        (n,) = self._unpack("<Q", pos, what)
        self._need(pos + 8, n, what)
        try:
            return self._map[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n
        except UnicodeDecodeError:
            raise TinyLLMError(f"{self.path}: corrupt GGUF header: {what} at offset {pos:,} "
                               f"is not UTF-8") from None

    def _value(self, vtype: int, pos: int, key: str):
        if vtype in _SCALARS:
            fmt, _ = _SCALARS[vtype]
            return self._unpack(fmt, pos, f"the value of {key!r}")[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return self._string(pos, f"the value of {key!r}")
        if vtype == _ARRAY:
            etype, n = self._unpack("<IQ", pos, f"the array {key!r}")
            pos += 12
            if etype in _SCALARS:
                # Numeric arrays (token scores, token types, per-layer head counts):
                # a read-only numpy view, no copy.
                dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
                self._count(pos, n, dtype.itemsize, f"the array {key!r}")
                return (np.frombuffer(self._map, dtype=dtype, count=n, offset=pos),
                        pos + n * dtype.itemsize)
            if etype == _STRING:
                self._count(pos, n, 8, f"the string array {key!r}")
                return self._string_array(pos, n, key)
            # Arrays of arrays: llama.cpp refuses them too, and each inner array would
            # cost a Python object per 12 header bytes.
            raise TinyLLMError(f"{self.path}: metadata {key!r} is an array of type {etype}; "
                               f"only arrays of numbers or strings are supported")
        raise TinyLLMError(f"{self.path}: metadata {key!r} has unknown value type {vtype}")

    def _string_array(self, pos: int, n: int, key: str) -> tuple[list, int]:
        # The vocabulary: up to 262k strings.  Slicing the mmap once per string
        # and decoding is the cheapest thing Python can do here.  n was checked
        # against the remaining bytes, so the list below is no larger than the file.
        buf, unpack, out = self._map, struct.unpack_from, [None] * n
        end = min(self.file_size, MAX_HEADER_BYTES)
        for i in range(n):
            if pos + 8 > end:
                self._need(pos, 8, f"string {i} of {key!r}")
            (k,) = unpack("<Q", buf, pos)
            pos += 8
            if pos + k > end:
                self._need(pos, k, f"string {i} of {key!r}")
            out[i] = buf[pos:pos + k].decode("utf-8", errors="replace")
            pos += k
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

    # Typed reads of the hyperparameters.  A hostile or broken file can store any type
    # under any key; these turn a wrong one into one line instead of a TypeError deep
    # in the model.  Ranges: what a tensor dimension can be (ggml uses int32 counts).
    def get_int(self, key: str, default=None, lo: int = 1, hi: int = 2**31 - 1):
        """An integer (or a per-layer array of integers, returned as a tuple) in lo..hi."""
        v = self.metadata.get(key, default)
        if v is None:
            raise TinyLLMError(f"{self.path}: missing metadata {key}")
        values = v.tolist() if isinstance(v, np.ndarray) else v
        many = isinstance(values, (list, tuple))
        for x in values if many else [values]:
            if isinstance(x, bool) or not isinstance(x, int):
                raise TinyLLMError(f"{self.path}: metadata {key} must be an integer, got {x!r:.40}")
            if not lo <= x <= hi:
                raise TinyLLMError(f"{self.path}: metadata {key} = {x} is out of range ({lo} to {hi})")
        if many and not values:
            raise TinyLLMError(f"{self.path}: metadata {key} is an empty array")
        return tuple(values) if many else values

    def get_float(self, key: str, default=None) -> float:
        """A finite number."""
        v = self.metadata.get(key, default)
        if v is None:
            raise TinyLLMError(f"{self.path}: missing metadata {key}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise TinyLLMError(f"{self.path}: metadata {key} must be a finite number, got {v!r:.40}")
        return float(v)

    def close(self) -> None:
        self._bytes = None
        try:
            self._map.close()
        except BufferError:
            pass  # numpy views still alive; the map closes when they are collected
