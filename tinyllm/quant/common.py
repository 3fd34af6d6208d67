"""Shared pieces of the quantized formats: f16 scales, row chunking, the format record.

Every format stores a matrix as rows of blocks.  A block packs `block_size`
weights into `type_size` bytes: small integers plus one or a few f16 scales.
Kernels read the file's bytes directly (a uint8 view of shape
(n_rows, row_bytes)) so a model costs its file size in memory, no more.
"""

from __future__ import annotations

import numpy as np

from ..jit import HAVE_NUMBA, njit

# f16 bit pattern -> float32 value, for all 65536 patterns (256 KiB).  Scales are
# read as two bytes and looked up here; exact, and cheaper than bit fiddling.
F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# ---- numpy helpers (reference dequantizers and the no-numba path) -------------------------
def f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian f16 at byte `offset` of each block, as float32: (n,)."""
    bits = blocks[:, offset].astype(np.uint16) | (blocks[:, offset + 1].astype(np.uint16) << 8)
    return F16_TO_F32[bits]


def u32_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian uint32 at byte `offset` of each block: (n,)."""
    b = blocks[:, offset:offset + 4].astype(np.uint32)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., n) bytes -> (..., 2n): the n low nibbles, then the n high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def row_chunks(n_rows: int, n_cols: int, n_tokens: int = 1, budget: int = 1 << 21):
    """Row ranges small enough that a chunk's float32 temporaries stay ~8 MiB."""
    step = max(1, budget // max(1, n_cols * max(1, min(n_tokens, 8))))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


# ---- numba helpers ---------------------------------------------------------------------------
@njit(inline="always")
def f16_at(row, o, lut):
    """float32 value of the little-endian f16 at row[o], row[o+1]."""
    return lut[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


@njit(inline="always")
def n_chunks(n_rows):
    """How many row chunks a prange splits a matrix into: enough to balance two or
    four cores, few enough that per-chunk scratch allocation is noise."""
    return min(n_rows, 64)


# ---- the format record -----------------------------------------------------------------------
class QuantFormat:
    """Everything tinyllm knows about one ggml tensor type.

    dequantize_blocks(blocks uint8 (n, type_size)) -> float32 (n, block_size): numpy reference,
        bit-exact with gguf.quants.dequantize.
    linear_np(raw, x (T, n_cols)) -> (T, n_rows): numpy matmul with the same activation
        quantization as the numba kernels (the fallback, and the tests' tight oracle).
    matvec(raw, x, y, lut) / matmul(raw, x, y, lut): numba kernels, or None.
    act: how activations are rounded before the dot ("f32", "f16", "bf16", "q8_0",
        "q8_1", "q8_K"): llama.cpp's vec_dot type for this weight type.
    """

    def __init__(self, name, ggml_type, block_size, type_size, act, dequantize_blocks,
                 linear_np, matvec=None, matmul=None, weight_view=None):
        self.name, self.ggml_type = name, int(ggml_type)
        self.block_size, self.type_size, self.act = block_size, type_size, act
        self.dequantize_blocks = dequantize_blocks
        self.linear_np = linear_np
        self.matvec = matvec if HAVE_NUMBA else None
        self.matmul = matmul if HAVE_NUMBA else None
        # Some kernels want the bytes under another dtype (F32: float32 rows); a view, no copy.
        self.weight_view = weight_view or (lambda raw: raw)

    def kernels(self):
        return [k for k in (self.matvec, self.matmul) if k is not None]

    def warmup(self):
        """Run each kernel once on a one-row, one-block matrix: compiles or loads the cache
        for exactly the argument types real calls use."""
        if self.matvec is None:
            return
        n_cols = self.block_size if self.block_size > 1 else 32
        raw = np.zeros((2, n_cols // self.block_size * self.type_size), np.uint8)
        w = self.weight_view(raw)
        self.matvec(w, np.zeros(n_cols, np.float32), np.zeros(2, np.float32), F16_TO_F32)
        if self.matmul is not None:
            self.matmul(w, np.zeros((2, n_cols), np.float32), np.zeros((2, 2), np.float32),
                        F16_TO_F32)

    def __repr__(self):
        return f"QuantFormat({self.name})"
