"""Q8_0: 8-bit weights, one f16 scale per 32.

    block (34 bytes):  d f16 | qs[32] int8            w[i] = d * qs[i]

Activations are Q8_0 too, so a block's dot product is d_w * d_x * sum_i qs_w[i] qs_x[i].
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import linear_q8_0_act
from .common import QuantFormat, f16_at, f16_field, row_chunks

BLOCK, SIZE = 32, 34


def dequantize_blocks(blocks):
    """(n, 34) uint8 -> (n, 32) float32, bit-exact with gguf."""
    return blocks[:, 2:].view(np.int8).astype(np.float32) * f16_field(blocks, 0)[:, None]


def unpack(raw):
    """(R, row_bytes) -> q (R, nb, 32) float32 integers, d (R, nb)."""
    b = raw.reshape(-1, SIZE)
    q = b[:, 2:].view(np.int8).astype(np.float32).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def linear_np(raw, x):
    n_cols = raw.shape[1] // SIZE * BLOCK
    return linear_q8_0_act(unpack, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- numba: one row -> float32 weights (see kernels.py) ---------------------------------------
@njit(inline="never")
def unpack_row(row, wf, gm, lut, aux):
    """wf (n,) = d * q: the row dequantized (bit-exact with dequantize_blocks)."""
    nb = row.shape[0] // SIZE
    bs = wf.shape[0] // nb              # 32, but known only at run time: see kernels.py
    for b in range(nb):
        o = b * SIZE
        d = f16_at(row, o, lut)
        for k in range(bs):
            wf[b * bs + k] = np.float32(np.int8(row[o + 2 + k])) * d


FORMATS = [QuantFormat("Q8_0", 8, BLOCK, SIZE, "q8_0", dequantize_blocks, linear_np, unpack_row)]
