"""Activation rounding: what llama.cpp does to x before a quantized dot product.

llama.cpp never multiplies quantized weights by float activations directly.  Each
weight type names a "vec_dot type" that x is first converted to, so the inner
loop is an integer dot product per block:

    weights                      activations   per block of x
    Q4_0 Q5_0 Q8_0 IQ4_NL        Q8_0          d f16 | q[32] int8           x ~ d*q
    Q4_1 Q5_1                    Q8_1          d f16 | s f16 | q[32] int8   s = d*sum(q)
    Q2_K..Q6_K IQ4_XS            Q8_K          d f32 | q[256] int8 | bsums[16] int16 (sums of 16 q)
    F16 / BF16                   F16 / BF16    x rounded to half / bfloat16
    F32                          F32           unchanged

tinyllm does the same by default.  The `numerics` of a call (Model(..., numerics=),
linear(..., numerics=); the CLI's default comes from TINYLLM_ACTIVATIONS) chooses:

  llama (default)   x rounded everywhere, as llama.cpp does.  Over Q8_0, Q4_0, Q4_1,
                    Q5_0, Q4_K and Q6_K weights the products are int8 dot products, one
                    token (matvec_int8: decode is a race against memory bandwidth, and
                    int8 is 2-3x faster than float there) or many (prefill_int8: the
                    prompt, perplexity); the other formats multiply the rounded x in float.
  decode            x rounded only in one-token steps over those six formats (their
                    matvec_int8); x as it is (float32) everywhere else, prefill and
                    perplexity included.  (The default before int8 prefill.)
  exact             x as it is everywhere: exactly the product llama.cpp would compute on
                    an F32 copy of the same weights.

Why the tests that compare with llama.cpp's F32 copy keep the prompt exact ("decode" or
"exact"; measured on SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M, see
tests/test_agreement.py and scripts/make_fixtures.py):
  * rounding x to 8 bits is a chaotic perturbation on these small models: a 1e-7
    change in one dot product flips int8 roundings that grow layer by layer, so
    llama.cpp disagrees with *itself* by KL 1e-3..4e-2 between its batched and
    one-token paths, or flash attention on and off.  No independent
    implementation can land within 1e-3 of one of those paths short of
    reproducing its SIMD summation order and exp() approximation bit for bit;
  * without the rounding, tinyllm matches llama.cpp on the F32 copy to KL ~1e-6,
    and over a whole text its perplexity is within 0.5 % of llama.cpp's on the
    quantized file (0.2-0.4 % lower: the rounding only adds noise; on a few windows
    the window-to-window noise of the rounding reaches 0.6 %);
  * the default ("llama") is then tested against llama.cpp on the quantized file, the
    way llama.cpp itself varies: greedy continuations token for token up to a close
    step, perplexity within 0.5 %.
So prompts and perplexities are tested against llama.cpp's F32 copy to ~1e-6 (exact),
the default against llama.cpp on the quantized file, and every int8 kernel against the
numpy functions below.

When rounding, the quantized x is kept unpacked, as float32 arrays of small
integers (exact), so kernels can multiply without converting them again for
every weight row.

Rounding modes follow llama.cpp's reference code: Q8_0/Q8_1 use C roundf (ties
away from zero) with scale amax/127; Q8_K uses round-half-even with scale
max/-127 (the largest-magnitude value maps to exactly -127, the other side may
reach +128 and is clipped to 127).
"""

from __future__ import annotations

import math

import numpy as np

from ..jit import f16_to_f32, f32_to_f16, njit

QK = 32     # block of Q8_0 / Q8_1
QK_K = 256  # super-block of Q8_K and the k-quants



# ---- numpy versions: x (T, n) float32 ---------------------------------------------------------
def round_away_np(v: np.ndarray) -> np.ndarray:
    """C's roundf: half away from zero (np.round rounds halves to even).  Not trunc(v + 0.5):
    v + 0.5 itself can round up, e.g. 0.49999997 + 0.5 == 1.0f.  The fraction a - floor(a)
    is exact; adding 0 makes -0 a plain 0, as C's (int) cast would.  (round_away below is
    the same for numba.)"""
    a = np.abs(v)
    fl = np.floor(a)
    return (np.copysign(fl + (a - fl >= np.float32(0.5)), v) + np.float32(0)).astype(v.dtype)


def to_f16_np(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float32)


def to_bf16_np(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even on the bit pattern) -> float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u & 0xFFFF0000) | 0x00400000, r).astype(np.uint32)
    return r.view(np.float32)


def _q8_np(x: np.ndarray):
    """x (T, n) -> q (T, n/32, 32) float32 integers in [-127, 127], d (T, n/32) before f16."""
    xb = x.reshape(x.shape[0], -1, QK).astype(np.float32)
    d = np.abs(xb).max(axis=-1) / np.float32(127)
    inv_d = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    return round_away_np(xb * inv_d[..., None]), d


def quantize_q8_0_np(x: np.ndarray):
    """x (T, n) -> q (T, n/32, 32) float32 integers in [-127, 127], d (T, n/32) f16-rounded."""
    q, d = _q8_np(x)
    return q, to_f16_np(d)


def quantize_q8_1_np(x: np.ndarray):
    """Q8_0 plus s = d * sum(q) per block (f16), used to fold in Q4_1/Q5_1's offset m."""
    q, d = _q8_np(x)
    return q, to_f16_np(d), to_f16_np(q.sum(axis=-1) * d)


def quantize_q8_K_np(x: np.ndarray):
    """x (T, n) -> q (T, n/256, 256) float32 integers, d (T, n/256) float32, bsums (T, n/256, 16)."""
    xb = x.reshape(x.shape[0], -1, QK_K).astype(np.float32)
    imax = np.abs(xb).argmax(axis=-1)[..., None]          # first largest |x|, as llama.cpp's loop
    vmax = np.take_along_axis(xb, imax, axis=-1)[..., 0]
    nonzero = vmax != 0
    iscale = np.divide(np.float32(-127), vmax, out=np.zeros_like(vmax), where=nonzero)
    q = np.minimum(np.float32(127), np.rint(xb * iscale[..., None]))
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=nonzero)
    bsums = q.reshape(*q.shape[:-1], 16, 16).sum(axis=-1)
    return q, d, bsums


# ---- numba versions: one row x (n,) -> fresh arrays ------------------------------------------
@njit(inline="always")
def round_away(v):
    t = np.float32(math.trunc(v))
    if abs(v - t) >= 0.5:
        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
    return t


@njit(inline="always")
def round_to_f16(v):
    """The float32 nearest to v that is exactly representable as an IEEE half
    (ties to even, overflow to inf): what storing v in an f16 field does.  One
    conversion each way (x86 F16C vcvtps2ph/vcvtph2ps, aarch64 fcvt)."""
    return f16_to_f32(f32_to_f16(v))


@njit(inline="always")
def _q8_block(x, xq, b):
    """Block b of x rounded into xq: d = max|x| / 127, q = roundf(x / d).  Returns d (before
    it is stored as f16) and the sum of the q."""
    amax = np.float32(0.0)
    for k in range(QK):
        amax = max(amax, abs(x[b * QK + k]))
    d = amax / np.float32(127.0)
    inv_d = np.float32(1.0) / d if d != 0 else np.float32(0.0)
    total = 0
    for k in range(QK):
        q = round_away(x[b * QK + k] * inv_d)
        xq[b * QK + k] = q
        total += int(q)
    return d, total


@njit
def quantize_q8_0(x, xq, xd):
    """Fill xq (n,) with the Q8_0 integers of x and xd (n/32,) with the f16-rounded scales."""
    for b in range(x.shape[0] // QK):
        d, _ = _q8_block(x, xq, b)
        xd[b] = round_to_f16(d)


@njit
def quantize_q8_1(x, xq, xd, xs):
    """Q8_0 plus xs[b] = f16(d * sum(q))."""
    for b in range(x.shape[0] // QK):
        d, total = _q8_block(x, xq, b)
        xd[b] = round_to_f16(d)
        xs[b] = round_to_f16(np.float32(total) * d)


@njit
def quantize_q8_K(x, xq, xd, xbsum):
    """Q8_K: xq (n,), xd (n/256,) float32, xbsum (n/16,) sums of each 16 consecutive q."""
    for b in range(x.shape[0] // QK_K):
        xb, qb = x[b * QK_K:(b + 1) * QK_K], xq[b * QK_K:(b + 1) * QK_K]
        amax = np.float32(0.0)
        for k in range(xb.shape[0]):
            amax = max(amax, abs(xb[k]))
        if not amax > 0:                            # all zero (or nan)
            xd[b] = 0.0
            qb[:] = 0
            xbsum[b * 16:(b + 1) * 16] = 0
            continue
        k = 0                                       # the first x of largest magnitude, sign kept
        while abs(xb[k]) != amax and k < QK_K - 1:
            k += 1
        iscale = np.float32(-127.0) / xb[k]
        for k in range(xb.shape[0]):
            qb[k] = min(np.float32(127.0), np.float32(np.rint(iscale * xb[k])))
        for j in range(16):
            s = 0                                   # an integer sum: the loop vectorizes
            for k in range(16 * j, 16 * j + 16):
                s += np.int32(qb[k])
            xbsum[b * 16 + j] = s
        xd[b] = np.float32(1.0) / iscale


# ---- numpy linear for each activation type (fallback path and test oracle) -------------------
# unpack(raw rows) returns the weights as integers (float32) plus their per-block scale terms;
# the integer dot products are formed with float32 matmul, exact since |sum| < 2^24.

def linear_q8_0_act(unpack, raw, x, chunks):
    """y[t, r] = sum_b (d_w[r,b] d_x[t,b]) * sum_k q_w[r,b,k] q_x[t,b,k]."""
    qx, dx = quantize_q8_0_np(x)                       # (T, nb, 32), (T, nb)
    out = np.empty((x.shape[0], raw.shape[0]), np.float32)
    for r0, r1 in chunks:
        qw, dw = unpack(raw[r0:r1])                    # (R, nb, 32), (R, nb)
        isum = np.matmul(qw.transpose(1, 0, 2), qx.transpose(1, 2, 0))   # (nb, R, T)
        scale = dw.T[:, :, None] * dx.T[:, None, :]   # (nb, R, T)
        out[:, r0:r1] = (scale * isum).sum(axis=0).T
    return out


def linear_q8_1_act(unpack, raw, x, chunks):
    """Weights d*q + m: y = sum_b d_w d_x isum + m_w s_x   (s_x = d_x * sum q_x)."""
    qx, dx, sx = quantize_q8_1_np(x)
    out = np.empty((x.shape[0], raw.shape[0]), np.float32)
    for r0, r1 in chunks:
        qw, dw, mw = unpack(raw[r0:r1])
        isum = np.matmul(qw.transpose(1, 0, 2), qx.transpose(1, 2, 0))
        y = (dw.T[:, :, None] * dx.T[:, None, :] * isum).sum(axis=0)
        y += mw @ sx.T
        out[:, r0:r1] = y.T
    return out


def linear_q8_K_act(unpack, raw, x, chunks):
    """k-quants: a super-block of 256 has sub-blocks j of L weights with integer scale sc_j
    and, for the "d*sc*q - dmin*m" types, an integer min m_j:
        y = sum_B d_x d_w sum_j sc_j isum_j  -  d_x dmin_w sum_j m_j bsum_j
    unpack -> q (R, nB, nj, L), sc (R, nB, nj), d (R, nB), m or None, dmin or None."""
    qx, dx, bsums = quantize_q8_K_np(x)                # (T, nB, 256), (T, nB), (T, nB, 16)
    out = np.empty((x.shape[0], raw.shape[0]), np.float32)
    for r0, r1 in chunks:
        qw, sc, dw, mw, dmin = unpack(raw[r0:r1])
        R, nB, nj, L = qw.shape
        qxj = qx.reshape(qx.shape[0], nB * nj, L)
        isum = np.matmul(qw.reshape(R, nB * nj, L).transpose(1, 0, 2),
                         qxj.transpose(1, 2, 0))       # (nB*nj, R, T)
        isum = isum.reshape(nB, nj, R, -1).astype(np.float64)
        sumi = np.einsum("rbj,bjrt->brt", sc.astype(np.float64), isum)
        y = (dw.T[:, :, None].astype(np.float64) * dx.T[:, None, :] * sumi).sum(axis=0)
        if mw is not None:
            bs = bsums.reshape(bsums.shape[0], nB, nj, -1).sum(axis=-1)   # sums over L
            summ = np.einsum("rbj,tbj->brt", mw.astype(np.float64), bs)
            y -= (dmin.T[:, :, None].astype(np.float64) * dx.T[:, None, :] * summ).sum(axis=0)
        out[:, r0:r1] = y.T
    return out


# ---- x for the int8 decode kernels: one row, rounded once per matvec ---------------------------
# Each returns the tuple its formats' dot4 takes: xq int8 (n,) (the integers, straight in),
# the scales xd, and the sums of q_x that fold in biases and mins.
@njit(inline="always")
def _empty_on_a_line(n):
    """np.empty(n, np.int8), starting on a 64-byte cache line: every 32-byte load of a
    block of x then stays within one line (a load split over two lines costs Q6_K a
    quarter of its speed: 24 -> 18 GB/s on one core with x 16 bytes into a line)."""
    buf = np.empty(n + 63, np.int8)
    o = (-buf.ctypes.data) % 64
    return buf[o:o + n]


@njit
def x_q8_0(x):
    """Q8_0: (xq, xd per 32)."""
    xq, xd = _empty_on_a_line(x.shape[0]), np.empty(x.shape[0] // QK, np.float32)
    quantize_q8_0(x, xq, xd)
    return xq, xd


@njit
def x_q8_0_biased(x, c):
    """Q8_0 for codes stored biased by c (Q4_0: 8, Q5_0: 16): (xq, xd, xi), xi[i] =
    -c (q_x[4i] + .. + q_x[4i+3]), the integer dot product's starting value per lane."""
    xq, xd = x_q8_0(x)
    xi = np.empty(x.shape[0] // 4, np.int32)
    for i in range(xi.shape[0]):
        xi[i] = -c * (np.int32(xq[4 * i]) + np.int32(xq[4 * i + 1]) + np.int32(xq[4 * i + 2]) + np.int32(xq[4 * i + 3]))
    return xq, xd, xi


@njit
def x_q8_1(x):
    """Q8_1: (xq, xd, xs), xs[b] = f16(d sum(q)) per 32: what multiplies Q4_1's m."""
    n = x.shape[0]
    xq, xd, xs = _empty_on_a_line(n), np.empty(n // QK, np.float32), np.empty(n // QK, np.float32)
    quantize_q8_1(x, xq, xd, xs)
    return xq, xd, xs


@njit
def x_q8_K(x, per):
    """Q8_K: (xq, xd per 256, sums of q_x per `per` = 16 (Q6_K) or 32 (Q4_K))."""
    n = x.shape[0]
    xq, xd, bs16 = _empty_on_a_line(n), np.empty(n // QK_K, np.float32), np.empty(n // 16, np.int32)
    quantize_q8_K(x, xq, xd, bs16)
    if per == 16:
        return xq, xd, bs16
    bs32 = np.empty(n // 32, np.int32)
    for j in range(n // 32):
        bs32[j] = bs16[2 * j] + bs16[2 * j + 1]
    return xq, xd, bs32
