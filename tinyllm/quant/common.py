"""Shared pieces of the quantized formats: f16 scales, row chunking, the format record.

Every format stores a matrix as rows of blocks.  A block packs `block_size`
weights into `type_size` bytes: small integers plus one or a few f16 scales.
Kernels read the file's bytes directly (a uint8 view of shape
(n_rows, row_bytes)) so a model costs its file size in memory, no more.
"""

from __future__ import annotations

import numpy as np

from ..ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from ..jit import HAVE_NUMBA, njit
from .rows import ACT_EXACT, ACT_EXACT_SUMS, ACT_OWN_TYPE, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K

# f16 bit pattern -> float32 value, for all 65536 patterns (256 KiB).  Scales are
# read as two bytes and looked up here; exact, and cheaper than bit fiddling.  (The
# 2048 NaN patterns convert to NaN; aarch64's numpy warns about that cast.)
with np.errstate(invalid="ignore"):
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


# ---- numpy helpers of the quantizers (the formats' quantize_*, and tinyllm/tools/quantize) ----------
def f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8: little-endian f16."""
    return np.asarray(v, np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8)


def inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d == 0 (ggml: `id = d ? 1.0f/d : 0.0f`)."""
    out = np.zeros_like(d)
    np.divide(np.float32(1), d, out=out, where=d != 0)
    return out


def signed_absmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The element of largest |x| along `axis`, sign kept; the first one on ties
    (ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`)."""
    i = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    return np.squeeze(np.take_along_axis(x, i, axis=axis), axis)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """q (n, 32) in 0..15 -> (n, 16) bytes: elements 0..15 in the low nibbles, 16..31 high."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def row_chunks(n_rows: int, n_cols: int, n_tokens: int = 1, budget: int = 1 << 21):
    """Row ranges small enough that a chunk's float32 temporaries stay ~8 MiB."""
    step = max(1, budget // max(1, n_cols * max(1, min(n_tokens, 8))))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


# ---- numba helpers ---------------------------------------------------------------------------
@njit(inline="always")
def u32_le(row, o):
    """the little-endian uint32 at row[o:o+4]: four codes at a time (LLVM makes it one load)"""
    return (np.uint32(row[o]) | (np.uint32(row[o + 1]) << 8) | (np.uint32(row[o + 2]) << 16)
            | (np.uint32(row[o + 3]) << 24))


LO4 = np.uint32(0x0F0F0F0F)     # the low nibble of each byte of a uint32
LO2 = np.uint32(0x03030303)     # the low two bits of each byte


@njit(inline="always")
def f16_at(row, o, lut):
    """float32 value of the little-endian f16 at row[o], row[o+1]."""
    return lut[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


# numba types integer arithmetic as int64, so `q & 15` on a byte becomes a 64-bit
# lane in LLVM's vectors (8 per AVX-512 register, and a slow int64 -> float
# conversion).  Casting the result back to uint8 lets LLVM narrow the whole chain to
# bytes: 16 codes per 128 bits, converted to float 16 at a time.  Measured: 4.1 ->
# 7.5 GB/s on one core for Q4_1 (the float decode kernels).
@njit(inline="always")
def lo(q):
    """low nibble of a byte, as uint8"""
    return np.uint8(q & 15)


@njit(inline="always")
def hi(q):
    """high nibble of a byte, as uint8"""
    return np.uint8(q >> 4)


# ---- the format record -----------------------------------------------------------------------
# How x is rounded before the dot (llama.cpp's vec_dot type), as rows.quantize_act's `kind`.
ACT_KINDS = {"q8_0": ACT_Q8_0, "q8_1": ACT_Q8_1, "q8_K": ACT_Q8_K}


class QuantFormat:
    """Everything tinyllm knows about one ggml tensor type (its module draws the layout).

    dequantize_blocks(blocks uint8 (n, type_size)) -> float32 (n, block_size): numpy reference,
        bit-exact with gguf.quants.dequantize.
    linear_np(raw, x (T, n_cols)) -> (T, n_rows): numpy matmul with llama.cpp's rounding of
        x (the fallback, and the tests' tight oracle).
    unpack_row(row, wf, gm, lut, aux): numba; one row's bytes -> its float32 weights wf
        (n_cols,), and for Q4_1/Q5_1 (mins="q8_1") the offsets m per block in gm (n_cols/32,),
        which rows.prefill_rows multiplies by x's block sums.  None for the float types.
    act: how activations are rounded before the dot ("f32", "f16", "bf16", "q8_0",
        "q8_1", "q8_K"): llama.cpp's vec_dot type for this weight type.
    aux: a constant table the kernels need (IQ4's levels, BF16's values).
    The kernels (numba; None where the format has none, or without numba):
      prefill(w, x (T, n), y (T, R), act_kind, lut, aux)   any T
      matvec_int8(w0, w1, w2, x (n,), y (R,), lut)   x rounded to 8 bits, int8 dot products
                                            (decode), y = [W0; W1; W2] x (rows.matvec_rows)
      prefill_int8(w, x (T, n), y (T, R), lut)   the same for T tokens (numerics "llama":
                                            rows.prefill_rows_int8)
      matvec_float(w0, w1, w2, x (n,), y (R,), lut)  x as it is (decode with numerics="exact"; F32)
    """

    def __init__(self, name, act, dequantize_blocks, linear_np, unpack_row=None, mins=None,
                 aux=None, weight_view=None, prefill=None, matvec_int8=None, matvec_float=None,
                 prefill_int8=None):
        self.name, self.ggml_type = name, int(GGMLQuantizationType[name])
        self.block_size, self.type_size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
        self.act = act
        self.dequantize_blocks = dequantize_blocks
        self.linear_np = linear_np
        self.unpack_row, self.mins = unpack_row, mins
        self.aux = aux if aux is not None else np.zeros(1, np.float32)
        self.int8_decode = matvec_int8 is not None     # decode rounds x (numerics "decode")
        self.prefill = prefill if HAVE_NUMBA else None
        self.matvec_int8 = matvec_int8 if HAVE_NUMBA else None
        self.prefill_int8 = prefill_int8 if HAVE_NUMBA else None
        self.matvec_float = matvec_float if HAVE_NUMBA else None
        # Some kernels want the bytes under another dtype (F16: uint16 rows); a view, no copy.
        self.weight_view = weight_view or (lambda raw: raw)

    def act_kind(self, rounded: bool) -> int:
        """What prefill does to x: llama.cpp's rounding, or x unchanged (with its block
        sums where the format has mins)."""
        if rounded:
            return ACT_KINDS.get(self.act, ACT_OWN_TYPE if self.act in ("f16", "bf16") else ACT_EXACT)
        return ACT_EXACT_SUMS if self.mins else ACT_EXACT

    def matvecs(self, numerics: str):
        """(int8, plain): the one-row kernels a decode step under `numerics` takes, or None.
          int8   x rounded to 8 bits (numerics "llama" and "decode")
          plain  x as it is (numerics "exact"; F32 always)
        Other single rows take the prefill kernel: one compiled kernel less in memory."""
        int8 = self.matvec_int8 if numerics != "exact" else None
        plain = self.matvec_float if (numerics == "exact" or self.block_size == 1) else None
        return int8, plain

    def kernels(self, numerics: str) -> dict:
        """The kernels a model in this format runs under `numerics`, by role."""
        int8, plain = self.matvecs(numerics)
        int8_prefill = self.prefill_int8 if numerics == "llama" else None
        roles = {"prefill": self.prefill if int8_prefill is None else None,
                 "int8 prefill": int8_prefill, "int8 decode": int8, "float decode": plain}
        return {role: k for role, k in roles.items() if k is not None}

    def warmup(self, numerics: str, only=None):
        """Run each kernel (or just `only`) once on a tiny matrix: compiles it, or loads it
        from the disk cache, for exactly the argument types real calls use."""
        n_cols = self.block_size if self.block_size > 1 else 32
        raw = np.zeros((2, n_cols // self.block_size * self.type_size), np.uint8)
        raw.flags.writeable = False      # as the model's weights are: a read-only file map
        w = self.weight_view(raw)
        for k in [only] if only is not None else self.kernels(numerics).values():
            if k is self.prefill:
                k(w, np.zeros((1, n_cols), np.float32), np.zeros((1, 2), np.float32),
                  self.act_kind(numerics == "llama"), F16_TO_F32, self.aux)
            elif k is self.prefill_int8:
                k(w, np.zeros((2, n_cols), np.float32), np.zeros((2, 2), np.float32), F16_TO_F32)
            else:
                k(w, w[:0], w[:0], np.zeros(n_cols, np.float32), np.zeros(2, np.float32), F16_TO_F32)

    def __repr__(self):
        return f"QuantFormat({self.name})"
