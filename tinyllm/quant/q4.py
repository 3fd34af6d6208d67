"""Q4_0 and Q4_1: 4-bit weights in blocks of 32.

    Q4_0 (18 bytes):  d f16 | qs[16]                  w = d * (q - 8)
    Q4_1 (20 bytes):  d f16 | m f16 | qs[16]          w = d * q + m

qs[16] holds 32 nibbles: byte k = code k (low nibble), code k+16 (high nibble).
Q4_0 takes Q8_0 activations; Q4_1 takes Q8_1, whose s = d_x*sum(q_x) turns the
offset into one multiply per block:  sum_i (d q_i + m) x_i = d d_x sum q_i q_x,i + m s.
The bias 8 of Q4_0's codes folds in the same way:  sum (q - 8) q_x = q . q_x - 8 sum q_x.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, HAVE_NUMBA, njit
from .activations import linear_q8_0_act, linear_q8_1_act, x_q8_0_biased, x_q8_1
from .common import (LO4, QuantFormat, f16_at, f16_bytes, f16_field, hi, inverse, lo, nibbles, pack_nibbles,
                     row_chunks, signed_absmax, u32_le)
from .rows import ACT_Q8_0, ACT_Q8_1, fetch_ahead4, matvec_rows, prefill_rows, prefill_rows_int8, x_blocks, x_with_sums

if HAVE_NUMBA:
    from .simd import (dot, dot_acc, f16_splat, fma, fmadd, fmul, hsum, load_i32x8, nibbles16,
                       splat, with_bit4, zeros_f32x8)

BLOCK = 32
SIZE_Q4_0, SIZE_Q4_1 = 18, 20


# ---- numpy: the reference dequantizers and matmuls ----------------------------------------------
def dequantize_q4_0(blocks):
    q = nibbles(blocks[:, 2:]).astype(np.float32) - np.float32(8)
    return f16_field(blocks, 0)[:, None] * q


def dequantize_q4_1(blocks):
    q = nibbles(blocks[:, 4:]).astype(np.float32)
    return f16_field(blocks, 0)[:, None] * q + f16_field(blocks, 2)[:, None]


def _symmetric(x, bits):
    """d = m / -2^(b-1) where m is the signed element of largest |x|: that element maps to
    q = 0 exactly, and the other end of the range (+2^(b-1) - 1) is clipped.  Using the sign
    of the extreme gains one level over a symmetric +-(2^(b-1)-1) grid."""
    half = 1 << (bits - 1)
    d = signed_absmax(x) / np.float32(-half)
    v = x * inverse(d)[:, None] + np.float32(half + 0.5)
    q = np.minimum(v.astype(np.int8), (1 << bits) - 1)   # (int8_t) truncates toward zero
    return d, q


def quantize_q4_0(x):
    """x (n, 32) float32 -> the blocks' bytes (n, 18), as llama.cpp's reference quantizer."""
    d, q = _symmetric(x, 4)
    return np.concatenate([f16_bytes(d), pack_nibbles(q)], axis=-1)


def unpack_q4_0(raw):
    b = raw.reshape(-1, SIZE_Q4_0)
    q = (nibbles(b[:, 2:]).astype(np.float32) - 8).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def unpack_q4_1(raw):
    b = raw.reshape(-1, SIZE_Q4_1)
    q = nibbles(b[:, 4:]).astype(np.float32).reshape(raw.shape[0], -1, BLOCK)
    shape = (raw.shape[0], -1)
    return q, f16_field(b, 0).reshape(shape), f16_field(b, 2).reshape(shape)


def linear_q4_0(raw, x):
    n_cols = raw.shape[1] // SIZE_Q4_0 * BLOCK
    return linear_q8_0_act(unpack_q4_0, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


def linear_q4_1(raw, x):
    n_cols = raw.shape[1] // SIZE_Q4_1 * BLOCK
    return linear_q8_1_act(unpack_q4_1, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- prefill: one row -> float32 weights (rows.prefill_rows) ------------------------------------
@njit(inline="never")
def unpack_row_4bit(row, wf, gm, lut, aux):
    """wf (n,) = d * aux[q] for blocks d f16 | qs[16] of 4-bit codes: Q4_0 with aux = q - 8
    (Q4_0_LEVELS), IQ4_NL with its non-linear levels (iq4.KVALUES)."""
    nb = row.shape[0] // SIZE_Q4_0
    half = wf.shape[0] // nb // 2       # 16, known only at run time (see rows.py)
    for b in range(nb):
        o = b * SIZE_Q4_0
        d = f16_at(row, o, lut)
        x0 = b * 2 * half
        for k in range(half):
            v = row[o + 2 + k]
            wf[x0 + k] = d * aux[v & 15]
            wf[x0 + half + k] = d * aux[v >> 4]


Q4_0_LEVELS = np.arange(-8, 8, dtype=np.float32)     # Q4_0's code q stands for q - 8


@njit(inline="never")
def unpack_row_q4_1(row, wf, gm, lut, aux):
    """wf (n,) = d * q, gm (n/32,) = m: the offset multiplies Q8_1's s = d_x sum q_x
    (an f16, as in llama.cpp), so it is kept apart from the weights."""
    nb = row.shape[0] // SIZE_Q4_1
    half = wf.shape[0] // nb // 2
    for b in range(nb):
        o = b * SIZE_Q4_1
        d = f16_at(row, o, lut)
        gm[b] = f16_at(row, o + 2, lut)
        x0 = b * 2 * half
        for k in range(half):
            v = np.int32(row[o + 4 + k])
            wf[x0 + k] = np.float32(np.int32(v & 15)) * d
            wf[x0 + half + k] = np.float32(np.int32(v >> 4)) * d


# ---- int8 prefill: one row -> its codes and block scales (rows.prefill_rows_int8) ---------------
@njit(inline="never")
def codes_q4(row, P4, i, S8, M8, lut):
    """Q4_0 and Q4_1 (M8 has room for the offsets m): codes q, four at a time, as row i of
    the 8 interleaved in P4; S = d per block."""
    nb = S8.shape[0] // 8
    size = row.shape[0] // nb                       # 18 or 20
    head = size - 16
    for b in range(nb):
        o = b * size
        S8[8 * b + i] = f16_at(row, o, lut)
        if M8.shape[0]:
            M8[8 * b + i] = f16_at(row, o + 2, lut)
        for j in range(4):                          # bytes 4j..: codes 4j.. (low), 16 + 4j.. (high)
            v = u32_le(row, o + head + 4 * j)
            P4[8 * (8 * b + j) + i] = v & LO4
            P4[8 * (8 * b + 4 + j) + i] = (v >> 4) & LO4


# ---- decode with int8 x: four rows' dot products (rows.matvec_rows) -----------------------------
@njit(fastmath=FASTMATH, inline="never")
def dot4_int8_q4_0(w0, w1, w2, w3, xr, lut):
    xq, xd, xi = xr
    return dot4_int8_biased(w0, w1, w2, w3, xq, xd, xi, lut, False)


@njit(fastmath=FASTMATH, inline="always")      # inlined: five_bits becomes a constant
def dot4_int8_biased(w0, w1, w2, w3, xq, xd, xi, lut, five_bits):
    """Q4_0, and Q5_0 (five_bits: qh's bit k is bit 4 of code k, q5.py).  The bias c = 8
    or 16 enters as the integer dot product's starting value: xi holds -c (q_x[4i] + ..
    + q_x[4i+3]) for each of its lanes, the same for every row."""
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    size, qs = (22, 6) if five_bits else (18, 2)
    for b in range(xd.shape[0]):
        o, xo, d = size * b, 32 * b, splat(xd[b])
        if five_bits:
            q0, q1 = with_bit4(nibbles16(w0, o + qs), w0, o + 2), with_bit4(nibbles16(w1, o + qs), w1, o + 2)
            q2, q3 = with_bit4(nibbles16(w2, o + qs), w2, o + 2), with_bit4(nibbles16(w3, o + qs), w3, o + 2)
        else:
            q0, q1, q2, q3 = nibbles16(w0, o + qs), nibbles16(w1, o + qs), nibbles16(w2, o + qs), nibbles16(w3, o + qs)
        bias = load_i32x8(xi, 8 * b)
        fetch_ahead4(w0, w1, w2, w3, o, size)
        a0 = fma(a0, dot_acc(bias, q0, xq, xo), fmul(f16_splat(w0, o, lut), d))
        a1 = fma(a1, dot_acc(bias, q1, xq, xo), fmul(f16_splat(w1, o, lut), d))
        a2 = fma(a2, dot_acc(bias, q2, xq, xo), fmul(f16_splat(w2, o, lut), d))
        a3 = fma(a3, dot_acc(bias, q3, xq, xo), fmul(f16_splat(w3, o, lut), d))
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


@njit(fastmath=FASTMATH, inline="never")
def dot4_int8_q4_1(w0, w1, w2, w3, xr, lut):
    """Q8_1 x: xs[b] = f16(d_x sum(q_x)), so the m term is m_w xs[b].  It goes into the
    same 8 float lanes as the dot, an eighth in each (exact: a power of two), so that the
    scales are two table lookups and broadcasts (f16_splat), as in Q4_0: 10.5 -> 14.8 GB/s
    a core (Zen 3), where F16C conversions and a scalar sum per row were 40 % slower."""
    xq, xd, xs = xr
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for b in range(xd.shape[0]):
        o, xo, d, s = 20 * b, 32 * b, splat(xd[b]), splat(xs[b] * np.float32(0.125))
        q0, q1, q2, q3 = nibbles16(w0, o + 4), nibbles16(w1, o + 4), nibbles16(w2, o + 4), nibbles16(w3, o + 4)
        fetch_ahead4(w0, w1, w2, w3, o, 20)
        a0 = fmadd(fma(a0, dot(q0, xq, xo), fmul(f16_splat(w0, o, lut), d)), f16_splat(w0, o + 2, lut), s)
        a1 = fmadd(fma(a1, dot(q1, xq, xo), fmul(f16_splat(w1, o, lut), d)), f16_splat(w1, o + 2, lut), s)
        a2 = fmadd(fma(a2, dot(q2, xq, xo), fmul(f16_splat(w2, o, lut), d)), f16_splat(w2, o + 2, lut), s)
        a3 = fmadd(fma(a3, dot(q3, xq, xo), fmul(f16_splat(w3, o, lut), d)), f16_splat(w3, o + 2, lut), s)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


# ---- decode with x as it is ---------------------------------------------------------------------
@njit(fastmath=FASTMATH, inline="never")
def dot4_float_q4_0(w0, w1, w2, w3, xr, lut):
    return dot4_float_q4(w0, w1, w2, w3, xr[0], xr[1], lut, xr[0].shape[0] // xr[1].shape[0] // 2, False)


@njit(fastmath=FASTMATH, inline="never")
def dot4_float_q4_1(w0, w1, w2, w3, xr, lut):
    return dot4_float_q4(w0, w1, w2, w3, xr[0], xr[1], lut, xr[0].shape[0] // xr[1].shape[0] // 2, True)


@njit(fastmath=FASTMATH, inline="always")
def dot4_float_q4(w0, w1, w2, w3, x, xsum, lut, hb, has_min):
    """d (q . x) - 8 d sum(x)  (Q4_0),  or  d (q . x) + m sum(x)  (Q4_1), per block.
    hb = 16 bytes per block arrives at run time (rows.py says why)."""
    a0 = a1 = a2 = a3 = np.float32(0.0)
    head = 4 if has_min else 2
    for b in range(xsum.shape[0]):
        o, xo = b * (hb + head), b * 2 * hb
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(hb):
            xl, xh = x[xo + k], x[xo + hb + k]
            q0, q1, q2, q3 = w0[o + head + k], w1[o + head + k], w2[o + head + k], w3[o + head + k]
            s0 += np.float32(lo(q0)) * xl + np.float32(hi(q0)) * xh
            s1 += np.float32(lo(q1)) * xl + np.float32(hi(q1)) * xh
            s2 += np.float32(lo(q2)) * xl + np.float32(hi(q2)) * xh
            s3 += np.float32(lo(q3)) * xl + np.float32(hi(q3)) * xh
        xs = xsum[b]
        if has_min:                                # + m * sum(x)
            a0 += f16_at(w0, o, lut) * s0 + f16_at(w0, o + 2, lut) * xs
            a1 += f16_at(w1, o, lut) * s1 + f16_at(w1, o + 2, lut) * xs
            a2 += f16_at(w2, o, lut) * s2 + f16_at(w2, o + 2, lut) * xs
            a3 += f16_at(w3, o, lut) * s3 + f16_at(w3, o + 2, lut) * xs
        else:                                      # d * (s - 8 sum(x))
            xs = np.float32(8.0) * xs
            a0 += f16_at(w0, o, lut) * (s0 - xs)
            a1 += f16_at(w1, o, lut) * (s1 - xs)
            a2 += f16_at(w2, o, lut) * (s2 - xs)
            a3 += f16_at(w3, o, lut) * (s3 - xs)
    return a0, a1, a2, a3


# ---- the kernels: the row drivers with each format's pieces -------------------------------------
@njit
def x_q4_0(x):
    return x_q8_0_biased(x, 8)


@njit
def xT_q4_0(x):
    return x_blocks(x, ACT_Q8_0, 32, 8)


@njit
def xT_q4_1(x):
    return x_blocks(x, ACT_Q8_1, 32, 0)


@njit(parallel=True)
def prefill_q4_0(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_4bit, w, x, y, act, lut, aux)


@njit(parallel=True)
def matvec_int8_q4_0(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8_q4_0, x_q4_0, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8_q4_0(w, x, y, lut):
    prefill_rows_int8(codes_q4, xT_q4_0, 4, w, x, y, lut)


@njit(parallel=True)
def matvec_float_q4_0(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float_q4_0, x_with_sums, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_q4_1(w, x, y, act, lut, aux):
    prefill_rows(unpack_row_q4_1, w, x, y, act, lut, aux)


@njit(parallel=True)
def matvec_int8_q4_1(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_int8_q4_1, x_q8_1, w0, w1, w2, x, y, lut)


@njit(parallel=True)
def prefill_int8_q4_1(w, x, y, lut):
    prefill_rows_int8(codes_q4, xT_q4_1, 4, w, x, y, lut)


@njit(parallel=True)
def matvec_float_q4_1(w0, w1, w2, x, y, lut):
    matvec_rows(dot4_float_q4_1, x_with_sums, w0, w1, w2, x, y, lut)


FORMATS = [
    QuantFormat("Q4_0", "q8_0", dequantize_q4_0, linear_q4_0, unpack_row_4bit, aux=Q4_0_LEVELS,
                prefill=prefill_q4_0, matvec_int8=matvec_int8_q4_0, matvec_float=matvec_float_q4_0,
                prefill_int8=prefill_int8_q4_0),
    QuantFormat("Q4_1", "q8_1", dequantize_q4_1, linear_q4_1, unpack_row_q4_1, mins="q8_1",
                prefill=prefill_q4_1, matvec_int8=matvec_int8_q4_1, matvec_float=matvec_float_q4_1,
                prefill_int8=prefill_int8_q4_1),
]
