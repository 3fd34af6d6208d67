"""The row drivers: y = W x for any block format, given that format's few inner functions.

Every format module (q8_0, q4, q5, kquants, iq4) hands these drivers its own pieces and
gets back a kernel of its own (a numba function with nothing but arrays in its
signature, so it is cached on disk and compiled only for the formats a model holds):

    decode  (one token):  matvec_rows(dot4, prepare, ...)   x prepared once, then four
                          weight rows at a time dotted straight from the file's bytes
    prefill (T tokens):   prefill_rows(unpack_row, ...)     TILE rows unpacked to float32
                          in L1, then dotted with every token (x as it is)
    int8 prefill:         prefill_rows_int8(unpack_codes, prepare, ...)   8 rows' codes
                          unpacked once, interleaved, then int8 dot products with every
                          token's rounded x (Q8_0: prefill_rows_dot4, the decode dot4 per token)

Read `matvec_q8_0_reference` first: it is the whole of int8 decode in plain Python, for
the simplest format.  The kernels compute the same sum, only faster.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, HAVE_NUMBA, njit, prange
from .activations import QK, QK_K, quantize_q8_0, quantize_q8_1, quantize_q8_K, round_away_np

if HAVE_NUMBA:
    from .simd import (add, fma, fmadd, fmul, load_f32x8, pairs_acc_x4, prefetch, splat, splat_i32,
                       store_f32x8, widen_pairs, zeros_f32x8, zeros_i32x8)


# ---- int8 decode, the plain way (llama2.c's runq.c matmul, over a GGUF Q8_0 matrix) -----------
def matvec_q8_0_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y (R,) = W (R, n) . x (n,) for W's Q8_0 bytes (R, n/32 * 34): x is rounded to int8
    per block of 32 (scale d_x = max|x| / 127), then each block's dot product is an
    integer one, scaled once by both blocks' scales:

        y_r = sum_b  d_w[r, b] d_x[b]  sum_k  q_w[r, b, k] q_x[b, k]

    The Q8_0 block (34 bytes) is  d f16 | q[32] int8  (drawn in q8_0.py)."""
    n = x.shape[0]
    q_x, d_x = np.zeros(n, np.int32), np.zeros(n // QK, np.float32)
    for b in range(n // QK):                        # round x: Q8_0 activations
        amax = np.abs(x[b * QK:(b + 1) * QK]).max()
        d = np.float32(amax / np.float32(127))
        d_x[b] = np.float16(d)                      # the scale is stored as f16
        inv_d = np.float32(1) / d if d else np.float32(0)
        q_x[b * QK:(b + 1) * QK] = round_away_np(x[b * QK:(b + 1) * QK] * inv_d)  # C roundf
    y = np.zeros(w.shape[0], np.float32)
    for r in range(w.shape[0]):
        for b in range(n // QK):
            block = w[r, 34 * b:34 * (b + 1)]
            d_w = block[:2].view(np.float16)[0]
            q_w = block[2:].view(np.int8).astype(np.int32)
            y[r] += np.float32(d_w) * d_x[b] * np.float32(q_w @ q_x[b * QK:(b + 1) * QK])
    return y


# ---- decode: four rows at a time, straight from the bytes --------------------------------------
# Which four rows share a call matters more than anything inside the dot product.
# Four *adjacent* rows make the loads hop between four spots a row apart inside the
# same 4 KiB page, a pattern the hardware prefetchers do not follow: out of cache a
# Q8_0 matvec then ran at 5.6 GB/s on one core.  Rows g, g+Q, g+2Q, g+3Q (Q = R/4)
# are four plain sequential streams, which the prefetchers do follow: 12.3 GB/s on
# one core, 21.7 GB/s on two (Gemma 3's 178 MB output matrix; scripts/bench_kernels.py).
#
# They follow them, but start too late: with a core busy unpacking codes, too few loads
# are in flight to fill the memory bus.  So the dot4s also ask (fetch_ahead) for each
# row's block AHEAD bytes further on, a few hundred nanoseconds before it is needed.  Past
# a row's end that is the next row of the same stream, which the same thread reads next.
# Measured on Zen 4 (AVX-512 VNNI, 2 threads), Qwen2.5-Coder-1.5B's decode with and
# without, alternating in one process (scripts/bench_ab.py): while the VM's memory was
# busy, Q4_K's hints alone took it from 23.0 to 27.6 tok/s; on a quiet machine, Q4_K's
# and Q6_K's 41.8 -> 42.5 (and the 0.5B's 94.6 -> 102.9); then Q4_1's and Q8_0's:
# SmolLM2 160 -> 181 tok/s, the 0.5B 90 -> 96.  1 KiB ahead was ~5 % slower than 2-8 KiB,
# which were alike.  (Q4_0 and Q5_0 asked first, 1 KiB ahead: a synthetic 1B's Q4_0
# decode went from 0.73x to 0.83x llama.cpp.  Q4_K's hints were tried then too, and
# judged useless from runs in separate processes, whose noise on a shared VM hid them.)
AHEAD = 2048


@njit(inline="always")
def fetch_ahead(w, o, size):
    """ask for the cache lines of w[o + AHEAD : o + AHEAD + size] (a block of `size`
    bytes at w[o], AHEAD further along the row): a hint, it never faults"""
    for j in range(0, size, 64):
        prefetch(w, o + AHEAD + j)


@njit(inline="always")
def fetch_ahead4(w0, w1, w2, w3, o, size):
    """fetch_ahead for each of a dot4's four rows"""
    fetch_ahead(w0, o, size)
    fetch_ahead(w1, o, size)
    fetch_ahead(w2, o, size)
    fetch_ahead(w3, o, size)


@njit(inline="always")
def rows_of_group(dot4, w, g, xr, y, y0, lut):
    """Group g of W's rows: rows g, g+Q, g+2Q, g+3Q (Q = R // 4), or for g == Q the 1..3
    rows left at the end (its last row repeated, the extra results dropped), into
    y[y0 + row]."""
    n_rows = w.shape[0]
    Q = n_rows // 4
    if g < Q:
        a0, a1, a2, a3 = dot4(w[g], w[g + Q], w[g + 2 * Q], w[g + 3 * Q], xr, lut)
        y[y0 + g], y[y0 + g + Q], y[y0 + g + 2 * Q], y[y0 + g + 3 * Q] = a0, a1, a2, a3
    else:
        r, last = 4 * Q, n_rows - 1
        a0, a1, a2, a3 = dot4(w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[last], xr, lut)
        y[y0 + r] = a0
        if last > r:
            y[y0 + r + 1] = a1
        if last > r + 1:
            y[y0 + r + 2] = a2


# One call takes up to three matrices that multiply the same x (a layer's q, k and v; its
# gate and up): y = [W0; W1; W2] x, their rows' groups spread over the threads together.
# Waking the threads costs ~4 us a parallel region, as much as SmolLM2's attn_k takes to
# read, so one region for the three saves most of two (SmolLM2, 2 threads, the kernels
# alone: q, k, v 29 -> 19 us; gate, up 60 -> 46 us).  A single matrix passes W1, W2 empty.
@njit(inline="always")
def matvec_rows(dot4, prepare, w0, w1, w2, x, y, lut):
    """y (R0+R1+R2,) = [W0; W1; W2] (R, row_bytes) . x (n,).  prepare(x) -> xr, what the
    format's dot4(w0, w1, w2, w3, xr, lut) -> four dot products needs of x (its int8
    rounding and block sums, or x with its block sums).  Inlined into each format's kernel."""
    xr = prepare(x)
    n0, n1, n2 = (w0.shape[0] + 3) // 4, (w1.shape[0] + 3) // 4, (w2.shape[0] + 3) // 4
    for i in prange(n0 + n1 + n2):
        w, first, y0 = w0, 0, 0                      # which matrix group i is of, its
        if i >= n0 + n1:                             # first group's index, where its rows go
            w, first, y0 = w2, n0 + n1, w0.shape[0] + w1.shape[0]
        elif i >= n0:
            w, first, y0 = w1, n0, w0.shape[0]
        rows_of_group(dot4, w, i - first, xr, y, y0, lut)


@njit
def x_with_sums(x):
    """(x, its sums per block of 32): what the float decode kernels take (the sums carry
    the codes' bias and the mins: sum_k (d q_k + m) x_k = d q.x + m sum x)."""
    nb = x.shape[0] // QK
    xsum = np.empty(nb, np.float32)
    for b in range(nb):
        s = np.float32(0.0)
        for k in range(QK * b, QK * b + QK):
            s += x[k]
        xsum[b] = s
    return x, xsum


# ---- prefill: unpack TILE rows to float32, dot them with every token -----------------------------
# For a tile of TILE weight rows, prefill_rows
#
#   1. unpacks the rows (the format's `unpack_row`) into wf (TILE, n) float32 weights,
#      exactly the values dequantize() gives, which stay in L1 cache (and gm (TILE, n/32),
#      the offsets m of Q4_1/Q5_1), then
#   2. dots those rows with every token's activations (dot_tile):
#
#          y[t, r] = sum_k wf[r, k] xa[t, k]  +  sum_b gm[r, b] s_x[t, b]
#
#      where xa is x as it is, or x rounded the way llama.cpp rounds it for this weight
#      type (xa = d_x q_x: Q8_0 / Q8_1 / Q8_K, see activations.py), and s_x is x's
#      per-block sum (Q8_1's s = f16(d_x sum q_x) when rounded).
#
# llama.cpp forms the rounded sum from integer products; here each product is rounded
# instead, which moves the result by float32 rounding (~1e-7 relative), far below the
# rounding of x itself; the Q8_1 term keeps llama.cpp's f16 s, which is *not* float noise.
# In exchange the dot is one long loop of fused multiply-adds, the same for all formats,
# and each unpacked tile serves all T tokens: the weights are read once per matmul.
#
# How it is shaped for numba/LLVM (checked with inspect_asm, see scripts/bench_kernels.py):
#   * dot_tile accumulates in scalars, which LLVM vectorizes as a reduction held in SIMD
#     registers (an accumulator *array* would live in memory);
#   * four rows per call give four independent accumulator chains sharing each load of x;
#   * unpack_row's inner trip counts come from array shapes at run time (16 or 32 is
#     only known when called).  With a compile-time constant LLVM unrolls the inner loop
#     and vectorizes the *block* loop with byte gathers (vpinsrb, vgather), ~5x slower;
#   * per-row work lives in functions of its own, not inline in the prange body.
TILE = 4          # weight rows unpacked and dotted together
MAX_CHUNKS = 32   # work items per parallel call (a few per thread: balances a busy machine)

# How x is rounded before the dot, as quantize_act's `kind` (QuantFormat.act_kind)
ACT_Q8_0, ACT_Q8_1, ACT_Q8_K = 0, 1, 2   # llama.cpp's vec_dot types
ACT_EXACT = 3            # x as it is (float32)
ACT_EXACT_SUMS = 4       # x as it is, plus its per-32 block sums (the m terms of Q4_1/Q5_1)
ACT_OWN_TYPE = 5         # F16/BF16 weights: x rounded to half / bfloat16, as llama.cpp does


@njit
def quantize_act(kind, x):
    """x (T, n) -> xa (T, n) = d_x q_x (or x itself), and s_x (T, n/32) where kind has sums."""
    T, n = x.shape
    if kind == ACT_EXACT:
        return x, np.empty((T, 0), np.float32)
    if kind == ACT_EXACT_SUMS:
        xs4 = np.empty((T, n // QK), np.float32)
        for t in range(T):
            xs4[t] = x_with_sums(x[t])[1]
        return x, xs4
    xa = np.empty((T, n), np.float32)
    xs = np.empty((T, n // QK if kind == ACT_Q8_1 else 0), np.float32)
    per = QK_K if kind == ACT_Q8_K else QK
    xd = np.empty(n // per, np.float32)
    bsum = np.empty(n // 16, np.float32)
    for t in range(T):
        if kind == ACT_Q8_0:
            quantize_q8_0(x[t], xa[t], xd)
        elif kind == ACT_Q8_1:
            quantize_q8_1(x[t], xa[t], xd, xs[t])
        else:
            quantize_q8_K(x[t], xa[t], xd, bsum)
        for b in range(n // per):
            for k in range(b * per, b * per + per):
                xa[t, k] *= xd[b]
    return xa, xs


@njit(fastmath=FASTMATH, inline="never")
def dot_tile(wf, gm, xa, xs, y, r):
    """y[r + i] = wf[i] . xa + gm[i] . xs, for the rows that exist (r + i < len(y))."""
    w0, w1, w2, w3 = wf[0], wf[1], wf[2], wf[3]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for k in range(xa.shape[0]):
        x = xa[k]
        a0 += w0[k] * x
        a1 += w1[k] * x
        a2 += w2[k] * x
        a3 += w3[k] * x
    for b in range(xs.shape[0]):
        a0 += gm[0, b] * xs[b]
        a1 += gm[1, b] * xs[b]
        a2 += gm[2, b] * xs[b]
        a3 += gm[3, b] * xs[b]
    n = y.shape[0] - r
    y[r] = a0
    if n > 1:
        y[r + 1] = a1
    if n > 2:
        y[r + 2] = a2
    if n > 3:
        y[r + 3] = a3


@njit(inline="always")
def prefill_rows(unpack_row, w, x, y, act, lut, aux):
    """y (T, R) = x (T, n) @ W^T for W (R, row_bytes): unpack_row(row, wf, gm, lut, aux)
    writes one row's float32 weights.  Inlined into each format's kernel."""
    xa, xs = quantize_act(act, x)
    n_rows, n_cols = w.shape[0], x.shape[1]
    n_tiles = (n_rows + TILE - 1) // TILE
    nc = min(n_tiles, MAX_CHUNKS)
    for c in prange(nc):
        wf = np.empty((TILE, n_cols), np.float32)
        gm = np.zeros((TILE, xs.shape[1]), np.float32)
        for tile in range(c * n_tiles // nc, (c + 1) * n_tiles // nc):
            r = tile * TILE
            for i in range(TILE):   # past the last row: unpack it again, dot_tile skips it
                unpack_row(w[min(r + i, n_rows - 1)], wf[i], gm[i], lut, aux)
            for t in range(x.shape[0]):
                dot_tile(wf, gm, xa[t], xs[t], y[t], r)


# ---- int8 prefill: the codes of 8 rows unpacked once, dotted with every token in int8 ------------
# Every token's x is rounded once (Q8_0 / Q8_1 / Q8_K, as in decode), and each format
# reads its weights as unsigned codes q (< 128) in blocks of BK (32, or Q6_K's 16) with a
# float scale s_w per block, a bias c (the codes are stored q + c: Q4_0 8, Q5_0 16,
# Q6_K 32) and for Q4_1/Q4_K a float offset per block m_w.  Then
#
#     y[t, r] = sum_b  s_w[r, b] d_x[t, b] (sum_k q_w[r, b, k] q_x[t, b, k]  -  c sum_k q_x[t, b, k])
#             + sum_b  m_w[r, b] s_x[t, b]
#
# (s_x: Q8_1's f16 d_x sum q_x, or Q4_K's d_x times the sub-block's sum of q_x).  The bias
# term is the same integer for every row, so it starts the integer sum; all of it is
# integer arithmetic up to one scaling per block.
#
# The layout is the one llama.cpp repacks its weights into on x86: 8 rows interleaved
# 4 bytes at a time, P[32 k + 4 i + j] = q[row i, 4 k + j].  One 32-byte load of P then
# holds 4 codes of each of the 8 rows, and one multiply-add against 4 bytes of x
# broadcast to all lanes (simd.pairs_acc_x4: vpdpbusd, sdot) leaves row i's partial dot in
# lane i: the 8 lanes are the 8 rows, so a block's scaling is one vector multiply-add for
# all of them, and no lane sums are needed at the end.  The 8 rows are unpacked once into
# P and serve all T tokens, four at a time (each load of P feeds four multiply-adds).
# (Q8_0's codes are signed, which the u8 x s8 instructions cannot take without tricks;
# it runs the decode dot4 per token instead: prefill_rows_dot4.)
# On wide rows (ffn_down: 8960 columns) the 8 rows' codes (72 KiB) leave L1 and all
# tokens' x (1.1 MiB at T = 128) leave L2, so the columns go a PANEL at a time: the
# panel's codes (16 KiB) stay in L1 and the tokens' x for it (256 KiB) in L2, and each
# panel's sums are added into y.
ROWS8 = 8
PANEL = 2048      # columns


@njit(inline="always")
def _unpack8(unpack_codes, w, r, P, S8, M8, lut):
    """rows r..r+7 (the last row repeated past the end) -> P, S8 (nb * 8), M8, interleaved"""
    P4 = P.view(np.uint32)                                  # 4 codes at a time
    for i in range(ROWS8):
        unpack_codes(w[min(r + i, w.shape[0] - 1)], P4, i, S8, M8, lut)


@njit(fastmath=FASTMATH, inline="never")
def _dot8x4(P, S8, M8, xq4, xd4, xc4, xs4, t, y, r, tmp, b0, b1, run):
    """y[t..t+3, r:r+8] += the 8 interleaved rows against a group of four tokens (x_blocks'
    layout: xq4 (4n,) the four tokens' codes 4 bytes of each in turn, xd4, xc4 (4 nb,) and
    xs4 (4 nm,) their values per block [4 b + j]), over blocks b0..b1-1 (b0 == 0: y = rather
    than +=).  run: the steps summed in a pair accumulator before widening
    (simd.pairs_acc_x4); it divides a block's steps."""
    n, nb = xq4.shape[0] // 4, xd4.shape[0] // 4
    per = n // nb // 4                     # 4-byte steps per block (8, or 4 for BK = 16)
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for b in range(b0, b1):
        i0, i1 = splat_i32(xc4[4 * b]), splat_i32(xc4[4 * b + 1])
        i2, i3 = splat_i32(xc4[4 * b + 2]), splat_i32(xc4[4 * b + 3])
        for k0 in range(b * per, b * per + per, run):
            p0, p1, p2, p3 = zeros_i32x8(), zeros_i32x8(), zeros_i32x8(), zeros_i32x8()
            for k in range(k0, k0 + run):  # one load of P feeds four tokens
                p0 = pairs_acc_x4(p0, P, 32 * k, xq4, 16 * k)
                p1 = pairs_acc_x4(p1, P, 32 * k, xq4, 16 * k + 4)
                p2 = pairs_acc_x4(p2, P, 32 * k, xq4, 16 * k + 8)
                p3 = pairs_acc_x4(p3, P, 32 * k, xq4, 16 * k + 12)
            i0, i1 = add(i0, widen_pairs(p0)), add(i1, widen_pairs(p1))
            i2, i3 = add(i2, widen_pairs(p2)), add(i3, widen_pairs(p3))
        s = load_f32x8(S8, 8 * b)
        a0 = fma(a0, i0, fmul(s, splat(xd4[4 * b])))
        a1 = fma(a1, i1, fmul(s, splat(xd4[4 * b + 1])))
        a2 = fma(a2, i2, fmul(s, splat(xd4[4 * b + 2])))
        a3 = fma(a3, i3, fmul(s, splat(xd4[4 * b + 3])))
    mb = xs4.shape[0] // 4 // nb           # offsets per block: 0 or 1 (nm == nb)
    for b in range(b0 * mb, b1 * mb):
        m = load_f32x8(M8, 8 * b)
        a0 = fmadd(a0, m, splat(xs4[4 * b]))
        a1 = fmadd(a1, m, splat(xs4[4 * b + 1]))
        a2 = fmadd(a2, m, splat(xs4[4 * b + 2]))
        a3 = fmadd(a3, m, splat(xs4[4 * b + 3]))
    store_f32x8(tmp, 0, a0)
    store_f32x8(tmp, 8, a1)
    store_f32x8(tmp, 16, a2)
    store_f32x8(tmp, 24, a3)
    n_rows = min(ROWS8, y.shape[1] - r)
    for j in range(min(4, y.shape[0] - t)):  # the real tokens only: a repeated one would add twice
        for i in range(n_rows):
            if b0 == 0:
                y[t + j, r + i] = tmp[8 * j + i]
            else:
                y[t + j, r + i] += tmp[8 * j + i]


@njit(inline="always")
def prefill_rows_int8(unpack_codes, prepare, code_bits, w, x, y, lut):
    """y (T, R) = x (T, n) @ W^T with int8 dot products.  prepare(x) -> x_blocks' groups of
    four tokens (xq (G, 4n) int8, xd (G, 4 nb) the x scale per block, xc (G, 4 nb) int32
    -c sum q_x, xs (G, 4 nm) the offsets' x terms); unpack_codes(row, P4, i, S8, M8, lut)
    writes one row's codes (< 2**code_bits) as row i of the 8 interleaved (P4: P as
    uint32, 4 codes each), its block scales and offsets as lane i of S8, M8.  Inlined into
    each format's kernel."""
    xq, xd, xc, xs = prepare(x)
    # AVX2 sums up to 32767 // (2 * 128 * max_code) steps' products as int16 pairs before
    # widening them (simd.pairs_acc_x4): 8 for 4-bit codes (a whole block), 4 for 5-bit;
    # Q6_K's 6-bit codes widen every step (2 at a time measured slower, Zen 3).  A
    # literal, so that numba compiles _dot8x4 for it: a run-time count ran 2x slower.
    run = 8 if code_bits == 4 else 4 if code_bits == 5 else 1
    T, n = x.shape
    nb, nm = xd.shape[1] // 4, xs.shape[1] // 4
    per_panel = max(1, PANEL * nb // n)    # blocks per panel
    n_groups = (w.shape[0] + ROWS8 - 1) // ROWS8
    nc = min(n_groups, MAX_CHUNKS)
    for c in prange(nc):
        P = np.empty(8 * n, np.uint8)
        S8, M8 = np.empty(8 * nb, np.float32), np.empty(8 * nm, np.float32)
        tmp = np.empty(32, np.float32)
        for g in range(c * n_groups // nc, (c + 1) * n_groups // nc):
            _unpack8(unpack_codes, w, ROWS8 * g, P, S8, M8, lut)
            for b0 in range(0, nb, per_panel):     # a panel of columns at a time (see above)
                b1 = min(nb, b0 + per_panel)
                for u in range(xq.shape[0]):       # a group of four tokens at a time
                    _dot8x4(P, S8, M8, xq[u], xd[u], xc[u], xs[u], 4 * u, y, ROWS8 * g, tmp,
                            b0, b1, run)


@njit(parallel=True)
def x_blocks(x, kind, bk, c):
    """x (T, n) rounded for prefill_rows_int8, in groups of four tokens (G = ceil(T/4), the
    last token repeated to fill the last group), interleaved the way _dot8x4 reads them:

        xq (G, 4n) int8     xq[g, 16 k + 4 j + m] = q_x[4 g + j, 4 k + m]: 4 bytes of each
                            token in turn
        xd, xc (G, 4 nb)    [g, 4 b + j]: token 4g+j's scale of block b (blocks of bk), -c sum q_x
        xs (G, 4 nm)        [g, 4 b + j]: ACT_Q8_1's f16 s per 32, or for ACT_Q8_K with c == 0
                            (the Q4_K mins) d_x times the sum of q_x per 32; else nm = 0

    kind: ACT_Q8_0, ACT_Q8_1 or ACT_Q8_K.  Four tokens' x in one stream: _dot8x4 reads
    them through one pointer, not four (x86-64 has 16 general registers: with four, LLVM
    spilled its accumulators to the stack), and the prefetcher follows two streams, not
    five.  Measured on Zen 3 (AVX2): _dot8x4 alone 22-24 -> 24-27 int8 MACs a cycle; a
    1.5B prefill 0-5 % faster.  The tokens are shared out over the threads: on one thread
    this was ~5 % of a 1.5B prefill."""
    T, n = x.shape
    G, nb = (T + 3) // 4, n // bk
    mins = kind == ACT_Q8_1 or (kind == ACT_Q8_K and c == 0)
    nm = n // QK if mins else 0
    xq = np.empty((G, 4 * n), np.int8)
    xd = np.empty((G, 4 * nb), np.float32)
    xc = np.empty((G, 4 * nb), np.int32)
    xs = np.empty((G, 4 * nm), np.float32)
    for u in prange(4 * G):
        g, j, t = u // 4, u % 4, min(np.intp(u), T - 1)
        q = np.empty(n, np.int8)
        d32, s32 = np.empty(n // QK, np.float32), np.empty(n // QK, np.float32)
        dK, bs16 = np.empty(n // QK_K, np.float32), np.empty(n // 16, np.float32)
        if kind == ACT_Q8_0:
            quantize_q8_0(x[t], q, d32)
        elif kind == ACT_Q8_1:
            quantize_q8_1(x[t], q, d32, s32)
        else:
            quantize_q8_K(x[t], q, dK, bs16)
        q4, xq4 = q.view(np.uint32), xq[g].view(np.uint32)
        for k in range(n // 4):
            xq4[4 * k + j] = q4[k]
        for b in range(nb):
            total = 0
            for k in range(b * bk, b * bk + bk):
                total += np.int32(q[k])
            xc[g, 4 * b + j] = -c * total
            xd[g, 4 * b + j] = dK[b * bk // QK_K] if kind == ACT_Q8_K else d32[b * bk // QK]
        for b in range(nm):
            if kind == ACT_Q8_1:
                xs[g, 4 * b + j] = s32[b]
            else:
                xs[g, 4 * b + j] = dK[b * QK // QK_K] * (bs16[2 * b] + bs16[2 * b + 1])
    return xq, xd, xc, xs


# ---- int8 prefill for Q8_0: the decode dot4, four rows in L1, every token -----------------------
TOKENS = 64       # tokens per slice: 64 x n bytes of int8 x stay in L2 (576 KiB at n = 8960)


@njit(inline="always")
def prefill_rows_dot4(dot4, prepare, w, x, y, lut):
    """y (T, R) = x (T, n) @ W^T: the decode kernel's dot4 (four rows, as matvec_rows)
    called for every token while its four rows sit in L1; tokens go TOKENS at a time so
    that their int8 x stays in L2.  Inlined into each format's kernel."""
    T, n_rows = x.shape[0], w.shape[0]
    xr = [prepare(x[0])]                           # each token's rounded x: a list of tuples
    for t in range(1, T):
        xr.append(prepare(x[t]))
    n_groups = (n_rows + 3) // 4
    nc = min(n_groups, MAX_CHUNKS)
    last = n_rows - 1
    for c in prange(nc):
        for t0 in range(0, T, TOKENS):
            for g in range(c * n_groups // nc, (c + 1) * n_groups // nc):
                r = 4 * g                          # past the last row: repeat it, drop the result
                w0, w1, w2, w3 = w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[min(r + 3, last)]
                m = min(4, n_rows - r)
                for t in range(t0, min(T, t0 + TOKENS)):
                    a0, a1, a2, a3 = dot4(w0, w1, w2, w3, xr[t], lut)
                    y[t, r] = a0
                    if m > 1:
                        y[t, r + 1] = a1
                    if m > 2:
                        y[t, r + 2] = a2
                    if m > 3:
                        y[t, r + 3] = a3
