"""The small element-wise pieces of a transformer, named after the math.

Every function takes float32 numpy arrays whose last axis is the feature axis,
so the same code serves decode (one token, shape [1, d]) and prefill ([T, d]).
These are cheap next to the matmuls, so plain numpy is fast enough and easiest to
read -- except that a numpy call costs microseconds however small its array is, and
decoding one token runs rms_norm and rope about sixty times each.  Those two have a
numba twin that computes the same numbers (tests/test_ops.py); the numpy version is
the reference, and what runs without numba.  So do the feed-forward's gated units
(swiglu, geglu), on expf below.
"""

from __future__ import annotations

import numpy as np

from .jit import FASTMATH, HAVE_NUMBA, f32_from_bits, njit


def rms_norm_np(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight  (Zhang & Sennrich 2019).    [..., d] -> [..., d]

    The mean of squares is accumulated in float64, as ggml does, so long rows
    of large activations do not lose precision.
    """
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * weight


@njit
def _rms_norm_rows(x, weight, eps, out):
    """x, out (rows, d): rms_norm_np row by row, the same float64 mean and float32 products"""
    d = x.shape[1]
    for r in range(x.shape[0]):
        ss = 0.0
        for i in range(d):
            v = np.float64(x[r, i])
            ss += v * v
        scale = np.float32(1.0 / np.sqrt(ss / d + eps))
        for i in range(d):
            out[r, i] = (x[r, i] * scale) * weight[i]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """rms_norm_np, through the numba twin when numba is there.     [..., d] -> [..., d]"""
    if not HAVE_NUMBA:
        return rms_norm_np(x, weight, eps)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    d = x.shape[-1]
    _rms_norm_rows(x.reshape(-1, d), weight, float(eps), out.reshape(-1, d))
    return out


# e^x in float32, 8 lanes at a time.  numba calls libm's expf one value at a time (5.4 ns
# each here); written as plain arithmetic, LLVM vectorizes it (0.6 ns):
#     e^x = 2^k e^r,   k = round(x / ln 2),   r = x - k ln 2   (|r| <= ln2 / 2)
# with k ln 2 taken in two parts (Cody & Waite: k times the short high part is exact),
# e^r by its Taylor series to r^7 (the first term left out, r^8 / 8! < 5.3e-9, is below
# float32's resolution near 1), and 2^k written straight into a float's exponent bits.
# Within 1.0e-7 relative of e^x (tests/test_ops.py).  x is clamped to [-87, 88], where
# 2^k stays a normal float: e^-87 ~ 1.6e-38 stands in for anything smaller, e^88 ~ 1.7e38
# for anything larger (attention and silu only need e^x to vanish or to dominate there).
@njit(inline="always", fastmath=FASTMATH)
def expf(x):
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))   # x / ln 2, rounded
    r = (x - k * np.float32(0.693359375)) + k * np.float32(2.12194440e-4)   # ln 2 = hi + lo
    f = np.float32
    p = f(1) + r * (f(1) + r * (f(1 / 2) + r * (f(1 / 6) + r * (f(1 / 24) + r * (
        f(1 / 120) + r * (f(1 / 720) + r * f(1 / 5040)))))))                   # e^r, Horner
    return p * f32_from_bits((np.int32(k) + np.int32(127)) << 23)          # * 2^k


# The feed-forward's gate:  act(gate) * up,  [T, n_ff].  Those arrays are the largest scratch
# of a prefill, so the numpy references build their result in one new array, updated in
# place, instead of a fresh temporary per operator (measured: 6 MiB less peak RSS on a
# 512-token prefill); the numba twins make one pass over gate and up, on expf (numpy makes
# 4 (silu) or 9 (gelu) passes over a prompt's gate: silu was 4 % of a 1.5B model's prefill).

def silu_np(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) = x / (1 + exp(-x)), the gate activation of SwiGLU (Shazeer 2020)."""
    y = np.negative(x)
    np.exp(y, out=y)
    y += 1.0
    np.divide(x, y, out=y)
    return y


def gelu_tanh_np(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Gemma's GeGLU gate."""
    y = np.square(x)
    y *= np.float32(0.044715)
    y += 1.0
    y *= x                                         # x + 0.044715 x^3
    y *= np.float32(0.7978845608028654)            # sqrt(2/pi)
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= np.float32(0.5)
    return y


def swiglu_np(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up: SwiGLU's gated unit (llama, qwen2).      [..., n_ff] x2 -> [..., n_ff]"""
    y = silu_np(gate)
    y *= up
    return y


def geglu_np(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up: GeGLU's (gemma).                    [..., n_ff] x2 -> [..., n_ff]"""
    y = gelu_tanh_np(gate)
    y *= up
    return y


@njit(fastmath=FASTMATH, error_model="numpy")
def _swiglu_flat(gate, up, out):
    """gate, up, out (n,): swiglu_np element by element, on expf (one pass, vectorized:
    numpy's error model, as Python's would check every division for a zero and keep the
    loop scalar)"""
    for i in range(gate.shape[0]):
        g = gate[i]
        out[i] = g / (np.float32(1) + expf(-g)) * up[i]


@njit(fastmath=FASTMATH, error_model="numpy")
def _geglu_flat(gate, up, out):
    """gate, up, out (n,): geglu_np element by element, on expf.  With u = sqrt(2/pi) (x +
    0.044715 x^3),  0.5 (1 + tanh u) = 1 / (1 + e^-2u),  so gelu(x) = x / (1 + e^-2u)."""
    for i in range(gate.shape[0]):
        v = gate[i]
        u = np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)
        out[i] = v / (np.float32(1) + expf(np.float32(-2) * u)) * up[i]


def _gated(kernel, reference, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """An element-wise numba twin over gate and up (the same shape), or its numpy reference."""
    if not HAVE_NUMBA:
        return reference(gate, up)
    gate = np.ascontiguousarray(gate, dtype=np.float32)
    up = np.ascontiguousarray(up, dtype=np.float32)
    y = np.empty_like(gate)
    kernel(gate.reshape(-1), up.reshape(-1), y.reshape(-1))
    return y


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """swiglu_np, through the numba twin when numba is there (silu within 2e-7 of float64)."""
    return _gated(_swiglu_flat, swiglu_np, gate, up)


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """geglu_np, through the numba twin when numba is there (gelu within 2e-6 of float64)."""
    return _gated(_geglu_flat, geglu_np, gate, up)


def softmax(x: np.ndarray) -> np.ndarray:
    """exp(x - max) / sum: subtracting the max keeps exp() from overflowing."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rope_cache(positions: np.ndarray, rot_dim: int, freq_base: float,
               freq_factors: np.ndarray | None = None, freq_scale: float = 1.0):
    """cos and sin of the rotation angles, [T, rot_dim/2] each.

    Rotary position embedding (Su et al. 2021) rotates feature pair i of a head
    by the angle  pos * theta_i,  theta_i = freq_base ^ (-2i / rot_dim).
    `freq_factors` (Llama 3 rope scaling, tensor rope_freqs.weight) divides theta_i
    per pair; `freq_scale` is linear position interpolation.
    """
    theta = freq_base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    if freq_factors is not None:
        theta = theta / freq_factors.astype(np.float64)
    angles = np.outer(positions.astype(np.float64) * freq_scale, theta)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_np(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate the first rot_dim features of every head.     x: [T, n_head, head_dim]

    Which features form a pair differs by model family:
      - "normal" (llama):  (x[2i], x[2i+1])            adjacent pairs
      - "neox" (qwen2, gemma, ...): (x[i], x[i + rot_dim/2])  the two halves
    Each pair (a, b) becomes (a cos - b sin,  a sin + b cos).
    """
    rot_dim = 2 * cos.shape[-1]
    c, s = cos[:, None, :], sin[:, None, :]          # [T, 1, rot_dim/2], broadcast over heads
    out = x.copy()
    if neox:
        a, b = x[..., :rot_dim // 2], x[..., rot_dim // 2:rot_dim]
        out[..., :rot_dim // 2] = a * c - b * s
        out[..., rot_dim // 2:rot_dim] = a * s + b * c
    else:
        a, b = x[..., 0:rot_dim:2], x[..., 1:rot_dim:2]
        out[..., 0:rot_dim:2] = a * c - b * s
        out[..., 1:rot_dim:2] = a * s + b * c
    return out


@njit
def _rope_rows(x, cos, sin, neox, out):
    """x, out (T, n_head, head_dim): rope_np, pair by pair"""
    half = cos.shape[1]                       # rot_dim / 2
    out[:] = x
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(half):
                ia, ib = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b, c, s = x[t, h, ia], x[t, h, ib], cos[t, i], sin[t, i]
                out[t, h, ia] = a * c - b * s
                out[t, h, ib] = a * s + b * c


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """rope_np, through the numba twin when numba is there.     x: [T, n_head, head_dim]"""
    if not HAVE_NUMBA:
        return rope_np(x, cos, sin, neox)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _rope_rows(x, cos, sin, bool(neox), out)
    return out


def top_k_np(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest logits, ascending by id (the reference)."""
    return np.sort(np.argpartition(logits, -k)[-k:])


@njit
def _top_k(logits, k):
    # One pass keeping the k best seen so far; a newcomer replaces the current worst.
    # For V >> k almost every logit is one comparison against that worst, where
    # np.argpartition costs 2.5 ms a token on Gemma 3's 262,144 logits (as much as a
    # fifth of a decode step).  Ties keep the lower id; nan never enters.
    ids = np.arange(k)
    vals = logits[:k].copy()
    worst = _worst(vals, ids)
    for i in range(k, logits.shape[0]):
        if logits[i] > vals[worst] or (np.isnan(vals[worst]) and not np.isnan(logits[i])):
            vals[worst], ids[worst] = logits[i], i
            worst = _worst(vals, ids)
    return np.sort(ids)


@njit(inline="always")
def _worst(vals, ids):
    """the slot to evict: a nan, else the smallest value, and of equal ones the highest id"""
    w = 0
    for j in range(vals.shape[0]):
        if np.isnan(vals[j]):
            return j
        if vals[j] < vals[w] or (vals[j] == vals[w] and ids[j] > ids[w]):
            w = j
    return w


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest logits (the top-k sampling candidates), ascending by id."""
    if not HAVE_NUMBA:
        return top_k_np(logits, k)
    return _top_k(np.ascontiguousarray(logits, dtype=np.float32), int(k))


def kernels() -> list:
    """The numba dispatchers warmup() loads (for the start-up's warm-cache check)."""
    return [_top_k, _rms_norm_rows, _rope_rows, _swiglu_flat, _geglu_flat] if HAVE_NUMBA else []


def warmup() -> None:
    """Load (or compile) the numba twins before the first token needs them."""
    if HAVE_NUMBA:
        top_k(np.zeros(8, np.float32), 2)
        x, weight = np.ones((1, 2, 4), np.float32), np.ones(4, np.float32)
        weight.flags.writeable = False       # as the model's norm weights are: the file map
        rms_norm(x, weight, 1e-6)
        cos, sin = rope_cache(np.arange(1), 4, 10000.0)
        rope(x, cos, sin, True)
        swiglu(x, x)
        geglu(x, x)
