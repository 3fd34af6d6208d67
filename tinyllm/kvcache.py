"""The KV cache: every layer's keys and values for the tokens seen so far.

Attention at position p needs K and V of positions 0..p.  Recomputing them
each step would cost a full forward pass per token, so we keep them:

    k[layer]: [n_cells, n_head_kv, k_row_bytes]     one row ("cell") per position and KV head
    v[layer]: [n_cells, n_head_kv, v_row_bytes]

Storage types (`kv_type`), in ggml's byte layout:

    f32    4 bytes per element
    f16    2 bytes per element (round to nearest even)
    q8_0   blocks of 32: d f16 | qs[32] int8                       x = d * qs        34 bytes
    q4_0   blocks of 32: d f16 | qs[16] (x[j] low, x[j+16] high)    x = d * (q - 8)   18 bytes

Quantized rows are made on store (round to nearest, as ggml's reference
quantizers) and dequantized a tile at a time inside attention.  Quantizing a
KV head needs head_dim to be a multiple of 32.

Memory grows in chunks of `chunk` cells as the conversation grows, up to n_ctx
(llama.cpp reserves all n_ctx cells up front).

Sliding-window layers (Gemma 3: window 512) only ever look at the last
`window` positions, so they keep a ring buffer: position p lives in cell
p % n_cells, and the ring never grows past window + n_batch cells (room for the
window before a batch plus the batch itself), however long the conversation.
Full layers use the same rule with n_cells >= positions stored, so p % n_cells = p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TinyLLMError
from .ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from .jit import FASTMATH, HAVE_NUMBA, f32_to_f16, njit
from .quant import dequantize
from .quant.activations import quantize_q8_0 as quantize_q8_0_block
from .quant.q4 import quantize_q4_0
from .quant.q8_0 import quantize_q8_0

if HAVE_NUMBA:
    from .quant.simd import f16_at, f16x8_at, fma, int8x8, store_f32x8, zeros_f32x8

QK = 32                                  # elements per block of q8_0 and q4_0


@dataclass(frozen=True)
class KVFormat:
    name: str
    code: int                            # what the numba kernels branch on
    block_size: int                      # elements per block
    type_size: int                       # bytes per block

    def row_bytes(self, n: int) -> int:
        return n // self.block_size * self.type_size


F32, F16, Q8_0, Q4_0 = 0, 1, 2, 3
KV_FORMATS = {name: KVFormat(name, code, *GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]])
              for code, name in enumerate(("f32", "f16", "q8_0", "q4_0"))}
KV_TYPES = tuple(KV_FORMATS)


def kv_format(kv_type: str) -> KVFormat:
    if kv_type not in KV_FORMATS:
        raise TinyLLMError(f"KV cache type {kv_type!r} not supported (supported: {', '.join(KV_TYPES)})")
    return KV_FORMATS[kv_type]


# ---- numpy: quantize and dequantize rows (the reference, and the no-numba path) -------------
# The block formats are the weights' own Q8_0 and Q4_0: their code lives in quant/.
def quantize_rows_np(x: np.ndarray, kv_type: str) -> np.ndarray:
    """float32 (..., n) -> uint8 (..., row_bytes) in kv_type's layout."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if kv_type == "f32":
        return x.view(np.uint8)
    if kv_type == "f16":
        with np.errstate(over="ignore"):          # beyond 65504 becomes inf, as in ggml
            return x.astype(np.float16).view(np.uint8)
    quantize = quantize_q8_0 if kv_type == "q8_0" else quantize_q4_0
    return quantize(x.reshape(-1, QK)).reshape(*x.shape[:-1], -1)


def dequantize_rows_np(raw: np.ndarray, kv_type: str) -> np.ndarray:
    """uint8 (..., row_bytes) -> float32 (..., n)."""
    raw = np.ascontiguousarray(raw)
    if kv_type == "f32":
        return raw.view(np.float32)
    if kv_type == "f16":
        return raw.view(np.float16).astype(np.float32)
    return dequantize(raw, GGMLQuantizationType[kv_type.upper()])


# ---- numba: the same, one row at a time ------------------------------------------------------
@njit(fastmath=FASTMATH)
def dequantize_cells(raw, g, c0, n, fmt, out):
    """Rows of KV head g at positions c0..c0+n-1 (cells (c0 + i) % n_cells) -> float32 out[:n].
    raw: uint8 [n_cells, n_head_kv, row_bytes]; out: C-contiguous [>= n, dim].

    It indexes whole arrays: a row slice would bump the shared array's reference count,
    an atomic op the threads would fight over.  F16 and Q8_0 (attention's common cases)
    convert 8 values at a time with simd.py's vectors.  The Q4_0 loop runs to `half`, a
    trip count computed from the shapes: with the constant 16 LLVM unrolls the loop fully
    and leaves it scalar, as nothing proves raw and out do not overlap."""
    n_cells, dim = raw.shape[0], out.shape[1]
    c = c0 % n_cells
    if fmt == F32:
        x = raw.view(np.float32)                                         # [n_cells, Hkv, dim]
        for i in range(n):
            for j in range(dim):
                out[i, j] = x[c, g, j]
            c = c + 1 if c + 1 < n_cells else 0
    elif fmt == F16:            # 8 halves at a time (a plain loop: 3.4 us for 170 cells x 3 heads, this 2.6)
        wide = dim - dim % 8
        for i in range(n):
            row = (c * raw.shape[1] + g) * raw.shape[2]                 # byte offset of raw[c, g]
            for j in range(0, wide, 8):
                store_f32x8(out, i * dim + j, f16x8_at(raw, row + 2 * j))
            for j in range(wide, dim):
                out[i, j] = f16_at(raw, row + 2 * j)
            c = c + 1 if c + 1 < n_cells else 0
    elif fmt == Q8_0:           # 8 codes at a time, times the block's d (9.6 us -> 3.6, as above)
        n_blocks = raw.shape[2] // (2 + QK)
        for i in range(n):
            row = (c * raw.shape[1] + g) * raw.shape[2]
            for b in range(n_blocks):
                o = row + b * (2 + QK)
                d = f16_at(raw, o)
                for j in range(0, QK, 8):
                    store_f32x8(out, i * dim + b * QK + j, fma(zeros_f32x8(), int8x8(raw, o + 2 + j), d))
            c = c + 1 if c + 1 < n_cells else 0
    else:
        n_blocks = raw.shape[2] // (2 + QK // 2)
        half = dim // n_blocks // 2
        for i in range(n):
            row = (c * raw.shape[1] + g) * raw.shape[2]
            for b in range(n_blocks):
                o = b * (2 + QK // 2)
                d = f16_at(raw, row + o)
                # byte = 16 hi + lo, split in float arithmetic (exact; integer ops would be
                # widened to int64, and int64 -> float does not vectorize on AVX2)
                for j in range(half):
                    x = np.float32(raw[c, g, o + 2 + j])
                    hi = np.floor(x * np.float32(0.0625))
                    out[i, b * 2 * half + j] = d * (x - np.float32(16) * hi - np.float32(8))
                    out[i, b * 2 * half + half + j] = d * (hi - np.float32(8))
            c = c + 1 if c + 1 < n_cells else 0


# Quantizers run without fastmath: every rounding must be the reference's.
@njit(inline="always")
def put_f16(out, r, o, v):
    """v as the little-endian f16 at out[r, o], out[r, o + 1]"""
    bits = f32_to_f16(v)
    out[r, o] = np.uint8(bits & 0xFF)
    out[r, o + 1] = np.uint8(bits >> 8)


@njit
def quantize_f16_rows(x, out):
    """x float32 [R, n] -> out uint8 [R, 2n]: numpy's astype(float16) (round to nearest
    even, inf beyond 65504), bit for bit but for signaling nans, which arithmetic never
    makes (the hardware quiets them)."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            put_f16(out, r, 2 * j, x[r, j])


@njit
def quantize_q8_0_rows(x, out, scales):
    """x float32 [R, n] -> out uint8 [R, n/32*34] and scales float32 [R, n/32]: the
    activations' Q8_0 rounding, row by row, d stored as f16 (ggml's FP32_TO_FP16)."""
    q = np.empty(x.shape[1], np.int8)
    for r in range(x.shape[0]):
        quantize_q8_0_block(x[r], q, scales[r])
        for b in range(x.shape[1] // QK):
            put_f16(out, r, b * (2 + QK), scales[r, b])
            for j in range(QK):
                out[r, b * (2 + QK) + 2 + j] = np.uint8(np.int32(q[b * QK + j]) & 0xFF)


@njit
def quantize_q4_0_rows(x, out, scales):
    """x float32 [R, n] -> out uint8 [R, n/32*18] and scales float32 [R, n/32]."""
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // QK):
            amax, m = np.float32(0), np.float32(0)
            for j in range(QK):
                v = x[r, b * QK + j]
                if abs(v) > amax:
                    amax, m = abs(v), v
            d = m / np.float32(-8)
            inv = np.float32(1) / d if d != 0 else np.float32(0)
            for j in range(QK // 2):
                lo = min(15, np.int32(x[r, b * QK + j] * inv + np.float32(8.5)))
                hi = min(15, np.int32(x[r, b * QK + QK // 2 + j] * inv + np.float32(8.5)))
                out[r, b * (2 + QK // 2) + 2 + j] = np.uint8(lo | (hi << 4))
            scales[r, b] = d
            put_f16(out, r, b * (2 + QK // 2), d)


def quantize_rows(x: np.ndarray, kv_type: str, out: np.ndarray | None = None) -> np.ndarray:
    """float32 (..., n) -> uint8 (..., row_bytes), written into `out` (C-contiguous: the cache's
    cells) when given.  numba for f16 and the block formats when available: a numpy call
    costs microseconds however small the rows, and a decode step stores two a layer."""
    if not HAVE_NUMBA or kv_type == "f32":
        rows = quantize_rows_np(x, kv_type)
        if out is None:
            return rows
        out[...] = rows
        return out
    f = KV_FORMATS[kv_type]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    if out is None:
        out = np.empty(x.shape[:-1] + (f.row_bytes(x.shape[-1]),), np.uint8)
    out2 = out.reshape(x2.shape[0], -1)                                # a view
    if kv_type == "f16":
        quantize_f16_rows(x2, out2)
    else:
        scales = np.empty((x2.shape[0], x2.shape[1] // QK), np.float32)
        (quantize_q8_0_rows if kv_type == "q8_0" else quantize_q4_0_rows)(x2, out2, scales)
    return out


# ---- the cache ---------------------------------------------------------------------------------
@dataclass
class KVView:
    """One layer's cached keys and values for positions first..n_kv-1, as attention reads them.
    Position p lives in cell p % n_cells."""
    k: np.ndarray                  # uint8 [n_cells, n_head_kv, k_row_bytes]
    v: np.ndarray                  # uint8 [n_cells, n_head_kv, v_row_bytes]
    kv_type: str
    first: int                     # oldest position held (> 0 once a ring has wrapped)
    n_kv: int                      # one past the newest position

    @property
    def fmt(self) -> int:
        return KV_FORMATS[self.kv_type].code

    @property
    def n_cells(self) -> int:
        return self.k.shape[0]

    @property
    def n_head_kv(self) -> int:
        return self.k.shape[1]

    @property
    def head_dim_k(self) -> int:
        f = KV_FORMATS[self.kv_type]
        return self.k.shape[2] // f.type_size * f.block_size

    @property
    def head_dim_v(self) -> int:
        f = KV_FORMATS[self.kv_type]
        return self.v.shape[2] // f.type_size * f.block_size

    def _rows(self, raw: np.ndarray, positions) -> np.ndarray:
        positions = np.arange(self.first, self.n_kv) if positions is None else np.asarray(positions)
        cells = positions % self.n_cells
        if len(cells) and cells[-1] - cells[0] == len(cells) - 1:     # no wrap: a view, not a gather
            rows = raw[cells[0]:cells[-1] + 1]
        else:
            rows = raw[cells]
        return dequantize_rows_np(rows, self.kv_type)

    def keys(self, positions=None) -> np.ndarray:
        """float32 [n, n_head_kv, head_dim_k] for these positions (default first..n_kv-1)."""
        return self._rows(self.k, positions)

    def values(self, positions=None) -> np.ndarray:
        """float32 [n, n_head_kv, head_dim_v]"""
        return self._rows(self.v, positions)


class LayerKV:
    """One layer's storage.  Holds positions first..n_stored-1 in cells p % n_cells."""

    def __init__(self, n_head_kv: int, k_row_bytes: int, v_row_bytes: int, window: int, max_cells: int):
        self.window = window                       # 0: attends to everything
        self.max_cells = max_cells                 # n_ctx, or window + n_batch for a ring
        self.k = np.empty((0, n_head_kv, k_row_bytes), np.uint8)
        self.v = np.empty((0, n_head_kv, v_row_bytes), np.uint8)
        self.first = 0
        self.n_stored = 0

    @property
    def n_cells(self) -> int:
        return self.k.shape[0]

    def resize(self, n_cells: int) -> None:
        """Reallocate to n_cells, moving each held position p to its new cell p % n_cells."""
        held = np.arange(self.first, self.n_stored)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = np.empty((n_cells,) + old.shape[1:], np.uint8)
            new[held % n_cells] = old[held % max(1, old.shape[0])]
            setattr(self, name, new)

    def write(self, pos: int, k: np.ndarray, v: np.ndarray, kv_type: str) -> None:
        """Encode k [T, n_head_kv, head_dim_k], v [T, n_head_kv, head_dim_v] as kv_type into
        the cells of positions pos..pos+T-1."""
        T, n = k.shape[0], self.n_cells
        c0 = pos % n
        if c0 + T <= n:                            # straight into the cells, no copy
            quantize_rows(k, kv_type, out=self.k[c0:c0 + T])
            quantize_rows(v, kv_type, out=self.v[c0:c0 + T])
        else:                                      # the batch wraps around the ring
            cells = np.arange(pos, pos + T) % n
            self.k[cells], self.v[cells] = quantize_rows(k, kv_type), quantize_rows(v, kv_type)
        self.n_stored = pos + T
        self.first = max(self.first, self.n_stored - n)

    def keeps_window_of(self, n: int) -> bool:
        """Could attention resume at position n?  A query at n sees n-window+1..n, so those
        positions before n must still be held."""
        lo = max(0, n - self.window + 1) if self.window else 0
        return self.first <= lo or n == 0


class KVCache:
    """Keys and values of every layer.  `windows[il]` is layer il's sliding window (None or 0:
    full attention).  n_batch: the largest batch a ring layer makes room for without growing."""

    def __init__(self, n_layer: int, n_head_kv: int, head_dim_k: int, head_dim_v: int,
                 n_ctx: int, kv_type: str = "f16", windows=None, flash_attn: bool = True,
                 chunk: int = 256, n_batch: int = 256):
        f = kv_format(kv_type)
        for name, dim in (("head_dim_k", head_dim_k), ("head_dim_v", head_dim_v)):
            if dim % f.block_size:
                raise TinyLLMError(f"KV cache type {kv_type} needs a head size that is a multiple of "
                                   f"{f.block_size}; this model's {name} is {dim}")
        self.n_layer, self.n_head_kv, self.n_ctx, self.chunk = n_layer, n_head_kv, n_ctx, chunk
        self.kv_type, self.flash_attn, self.n_batch = kv_type, flash_attn, n_batch
        self.head_dim_k, self.head_dim_v = head_dim_k, head_dim_v
        self.k_row_bytes, self.v_row_bytes = f.row_bytes(head_dim_k), f.row_bytes(head_dim_v)
        windows = list(windows) if windows is not None else [None] * n_layer
        if len(windows) != n_layer:
            raise ValueError(f"{len(windows)} windows for {n_layer} layers")
        self.layers = []
        for w in windows:
            w = int(w or 0)
            max_cells = min(n_ctx, w + n_batch) if w else n_ctx
            self.layers.append(LayerKV(n_head_kv, self.k_row_bytes, self.v_row_bytes, w, max_cells))

    # ---- writing and reading -------------------------------------------------------------------
    def store(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k [T, n_head_kv, head_dim_k], v [T, n_head_kv, head_dim_v] for positions pos..pos+T-1."""
        L, T = self.layers[layer], k.shape[0]
        end = pos + T
        if end > self.n_ctx:
            raise TinyLLMError(f"context full: {end} tokens > n_ctx {self.n_ctx}")
        if pos > L.n_stored:
            raise TinyLLMError(f"KV cache layer {layer} holds {L.n_stored} positions; cannot store "
                               f"position {pos} (truncate() returned a smaller position?)")
        if pos < L.n_stored:                       # overwriting: forget what came after pos
            if not L.keeps_window_of(pos):
                raise TinyLLMError(f"KV cache layer {layer} no longer holds the window before "
                                   f"position {pos}; truncate() first and re-feed from what it returns")
            self._truncate_layer(L, pos)
        self._reserve(L, end, T)
        L.write(pos, k, v, self.kv_type)

    def _reserve(self, L: LayerKV, end: int, T: int) -> None:
        """Make sure L can hold positions up to end-1 while a batch of T attends.
        A ring needs the window-1 positions before the batch plus the batch itself."""
        need = min(end, L.window - 1 + T) if L.window else end
        if need <= L.n_cells:
            return
        limit = max(L.max_cells, need)             # a batch larger than n_batch widens the ring
        L.resize(min(limit, -(-need // self.chunk) * self.chunk))

    def view(self, layer: int, n_kv: int) -> KVView:
        """What attention reads for queries ending at position n_kv-1 (just stored)."""
        L = self.layers[layer]
        if n_kv > L.n_stored:
            raise ValueError(f"layer {layer} holds {L.n_stored} positions, asked for {n_kv}")
        return KVView(L.k, L.v, self.kv_type, L.first, n_kv)

    def keys(self, layer: int, n: int) -> np.ndarray:
        """float32 [n - first, n_head_kv, head_dim_k]: positions first..n-1
        (first = 0 unless a ring wrapped)."""
        return self.view(layer, n).keys()

    def values(self, layer: int, n: int) -> np.ndarray:
        return self.view(layer, n).values()

    # ---- forgetting ----------------------------------------------------------------------------
    def can_truncate(self, n: int) -> bool:
        """True if every layer still holds what a query at position n would attend to.
        Full layers always do; a ring layer may have overwritten positions n-window+1..n-1
        with later ones."""
        n = max(0, min(n, self.n_used))
        return all(L.keeps_window_of(n) for L in self.layers)

    def truncate(self, n: int) -> int:
        """Forget positions >= n (cells stay allocated for reuse).  Returns the number of
        positions kept: n when possible, else 0 -- a ring layer had already overwritten
        what position n needs, so the cache was cleared and the caller must re-feed its
        tokens from position 0 (the returned value)."""
        n = max(0, min(n, self.n_used))
        if not self.can_truncate(n):
            n = 0
        for L in self.layers:
            self._truncate_layer(L, n)
        return n

    @staticmethod
    def _truncate_layer(L: LayerKV, n: int) -> None:
        L.n_stored = min(L.n_stored, n)
        L.first = 0 if n == 0 else min(L.first, n)

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def n_used(self) -> int:
        """Positions held (the conversation length the cache covers)."""
        return min(L.n_stored for L in self.layers) if self.layers else 0

    @property
    def n_cells(self) -> int:
        """Cells allocated in a full-attention layer (the largest layer)."""
        return max((L.n_cells for L in self.layers), default=0)

    @property
    def cells_allocated(self) -> list:
        """Cells allocated per layer (ring layers stay at most window + n_batch)."""
        return [L.n_cells for L in self.layers]

    @property
    def layer_bytes_per_cell(self) -> int:
        return self.n_head_kv * (self.k_row_bytes + self.v_row_bytes)

    @property
    def bytes_per_cell(self) -> int:
        """Bytes one position costs across all layers (while no ring has filled up)."""
        return self.n_layer * self.layer_bytes_per_cell

    @property
    def nbytes_allocated(self) -> int:
        return sum(L.n_cells for L in self.layers) * self.layer_bytes_per_cell

    @property
    def nbytes_used(self) -> int:
        """Bytes of cells that hold a live position."""
        return sum(L.n_stored - L.first for L in self.layers) * self.layer_bytes_per_cell
