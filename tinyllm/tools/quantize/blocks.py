"""The simple formats: float32 blocks -> the bytes of F32, F16, BF16, Q8_0, Q4_0/Q4_1, Q5_0/Q5_1.

Each `quantize_*` takes x (n_blocks, block_size) float32 and returns the blocks'
bytes (n_blocks, type_size) uint8, laid out as drawn in tinyllm/quant/q8_0.py,
q4.py, q5.py and float.py.  They re-implement llama.cpp's reference quantizers
(ggml-quants.c, quantize_row_*_ref), which are what its model quantizer runs when
there is no importance matrix; the float32 operations are done in the same order
so the bytes come out the same.

The rounding rules differ per format, and matter for bit-exactness:
    Q8_0            q = roundf(x / d)            half away from zero
    Q4_0, Q5_0      q = (int)(x / d + 8.5)       truncation (x/d + offset + 0.5 > 0)
    Q4_1, Q5_1      q = (int)((x - min) / d + 0.5)
    k-quants, IQ4   nearest_int()                half to even (see nearest_int below)
and every scale is stored as f16 (round to nearest even), but the 1/d used to
compute q is the float32 one, before that rounding.

The helpers at the top are shared with kquants.py and iq4.py; Q8_0's and Q4_0's
quantizers live with their formats in tinyllm/quant (the KV cache uses them too).
"""

from __future__ import annotations

import numpy as np

from ...quant.common import f16_bytes, inverse, pack_nibbles, signed_absmax
from ...quant.q4 import _symmetric, quantize_q4_0
from ...quant.q8_0 import quantize_q8_0

F32 = np.float32


# ---- shared helpers -----------------------------------------------------------------------------
def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int(): adds 1.5 * 2^23 in float32 so the FPU rounds to an integer, i.e.
    round half to even -- np.rint on float32.  int32 out."""
    return np.rint(v).astype(np.int32)


def round_f16(v: np.ndarray) -> np.ndarray:
    """float32 -> the f16 it is stored as -> float32 (round to nearest even, as F16C does)."""
    return np.asarray(v, F32).astype(np.float16).astype(F32)


def high_bits_u32(q: np.ndarray) -> np.ndarray:
    """q (n, 32) 5-bit values -> (n, 4) bytes: bit 4 of element i at bit i of a little-endian u32."""
    bit = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bit, axis=-1).astype("<u4").reshape(-1, 1).view(np.uint8)


# ---- float formats (block_size 1) -------------------------------------------------------------
def quantize_f32(x):
    return np.ascontiguousarray(x, F32).view(np.uint8).reshape(x.shape[0], 4)


def quantize_f16(x):
    return np.ascontiguousarray(x, F32).astype(np.float16).view(np.uint8).reshape(x.shape[0], 2)


def quantize_bf16(x):
    """The top 16 bits of the float32, rounded to nearest even on the dropped 16 bits
    (ggml_compute_fp32_to_bf16); a NaN keeps its top bits and is made quiet (bit 6)."""
    u = np.ascontiguousarray(x, F32).view(np.uint32)
    rounded = (u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    h = np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)
    return h.view(np.uint8).reshape(x.shape[0], 2)


# ---- Q4_0 / Q5_0: d f16 | [qh u32] | qs[16];  w = d (q - 2^(b-1)) ---------------------------
def quantize_q5_0(x):
    d, q = _symmetric(x, 5)
    return np.concatenate([f16_bytes(d), high_bits_u32(q), pack_nibbles(q & 15)], axis=-1)


# ---- Q4_1 / Q5_1: d f16 | m f16 | [qh u32] | qs[16];  w = d q + m -----------------------------
def _affine(x, bits):
    """m = min(x), d = (max - min) / (2^b - 1): the block's range split into 2^b - 1 steps."""
    lo, hi = x.min(axis=-1), x.max(axis=-1)
    d = (hi - lo) / F32((1 << bits) - 1)
    v = (x - lo[:, None]) * inverse(d)[:, None] + F32(0.5)
    q = np.minimum(v.astype(np.int8 if bits == 4 else np.uint8), (1 << bits) - 1)
    return d, lo, q


def quantize_q4_1(x):
    d, m, q = _affine(x, 4)
    return np.concatenate([f16_bytes(d), f16_bytes(m), pack_nibbles(q)], axis=-1)


def quantize_q5_1(x):
    d, m, q = _affine(x, 5)
    return np.concatenate([f16_bytes(d), f16_bytes(m), high_bits_u32(q), pack_nibbles(q & 15)],
                          axis=-1)
