"""IQ4_NL and IQ4_XS: 4-bit indices into a fixed non-linear table of 16 int8 levels.

    KVALUES = -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113
    (denser near zero, where most weights are)

    IQ4_NL (18 bytes):  d f16 | qs[16]        w = d * KVALUES[q]
        nibbles as Q4_0: low = elements 0..15, high = 16..31.  Activations Q8_0.
    IQ4_XS (136 bytes): d f16 | scales_h u16 | scales_l[4] | qs[128]
        8 sub-blocks of 32; sub-block j's 6-bit scale = nibble j%2 of scales_l[j/2]
        | bits 2j..2j+1 of scales_h << 4, minus 32;  qs[16j..16j+15] nibbles as above.
        w = d * (scale_j - 32) * KVALUES[q].  Activations Q8_K.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import QK, QK_K, linear_q8_0_act, linear_q8_K_act
from .common import QuantFormat, f16_at, f16_field, nibbles, row_chunks
from .q4 import unpack_row_4bit     # the same blocks as Q4_0, other levels
from .rows import prefill_rows

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                   dtype=np.float32)
SIZE_NL, SIZE_XS = 18, 136


# ---- numpy -------------------------------------------------------------------------------------
def dequantize_iq4_nl(blocks):
    return f16_field(blocks, 0)[:, None] * KVALUES[nibbles(blocks[:, 2:])]


def unpack_iq4_nl(raw):
    b = raw.reshape(-1, SIZE_NL)
    q = KVALUES[nibbles(b[:, 2:])].reshape(raw.shape[0], -1, QK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def linear_iq4_nl(raw, x):
    n_cols = raw.shape[1] // SIZE_NL * QK
    return linear_q8_0_act(unpack_iq4_nl, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


def _scales_xs(blocks):
    """(n, 136) -> (n, 8) int8 sub-block scales (already minus 32)."""
    h = blocks[:, 2].astype(np.uint16) | (blocks[:, 3].astype(np.uint16) << 8)
    high = (h[:, None] >> (2 * np.arange(8, dtype=np.uint16))) & 3
    low = np.stack([blocks[:, 4:8] & 15, blocks[:, 4:8] >> 4], axis=-1).reshape(-1, 8)
    return (low | (high.astype(np.uint8) << 4)).astype(np.int8) - np.int8(32)


def unpack_iq4_xs_blocks(blocks):
    n = blocks.shape[0]
    q = KVALUES[nibbles(blocks[:, 8:].reshape(n, 8, 16))]                        # (n, 8, 32)
    return q, _scales_xs(blocks), f16_field(blocks, 0), None, None


def dequantize_iq4_xs(blocks):
    q, sc, d, _, _ = unpack_iq4_xs_blocks(blocks)
    return ((d[:, None] * sc.astype(np.float32))[..., None] * q).reshape(-1, QK_K)


def linear_iq4_xs(raw, x):
    def by_rows(r):
        q, sc, d, _, _ = unpack_iq4_xs_blocks(r.reshape(-1, SIZE_XS))
        R = r.shape[0]
        return q.reshape(R, -1, 8, 32), sc.reshape(R, -1, 8), d.reshape(R, -1), None, None
    n_cols = raw.shape[1] // SIZE_XS * QK_K
    return linear_q8_K_act(by_rows, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- prefill: one row -> float32 weights (rows.prefill_rows); aux = KVALUES ------------------------
@njit(inline="never")
def unpack_row_iq4_xs(row, wf, gm, lut, aux):
    """wf (n,) = (d * (scale_j - 32)) * KVALUES[q]."""
    nB = row.shape[0] // SIZE_XS
    half = wf.shape[0] // (16 * nB)     # 16
    for B in range(nB):
        o = B * SIZE_XS
        d = f16_at(row, o, lut)
        sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
        for j in range(8):
            low = (np.int32(row[o + 4 + j // 2]) >> (4 * (j % 2))) & 15
            s = d * np.float32((low | (((sh >> (2 * j)) & 3) << 4)) - 32)
            q0, x0 = o + 8 + 16 * j, B * QK_K + 32 * j
            for k in range(half):
                v = row[q0 + k]
                wf[x0 + k] = s * aux[v & 15]
                wf[x0 + half + k] = s * aux[v >> 4]


# ---- the kernels (decode takes them too: no one-row kernels of their own) ----------------------
@njit(parallel=True)
def prefill_iq4_nl(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_4bit, w, x, y, act, lut, aux)


@njit(parallel=True)
def prefill_iq4_xs(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_iq4_xs, w, x, y, act, lut, aux)


FORMATS = [
    QuantFormat("IQ4_NL", "q8_0", dequantize_iq4_nl, linear_iq4_nl, unpack_row_4bit, aux=KVALUES,
                prefill=prefill_iq4_nl),
    QuantFormat("IQ4_XS", "q8_K", dequantize_iq4_xs, linear_iq4_xs, unpack_row_iq4_xs, aux=KVALUES,
                prefill=prefill_iq4_xs),
]
