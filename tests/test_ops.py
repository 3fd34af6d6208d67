"""The numba twins of rms_norm, rope, swiglu and geglu compute what their numpy references compute,
and expf (attention's and silu's vectorizable exp) is within a float32 ulp of e^x."""

import numpy as np
import pytest

from tinyllm import jit, ops


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="expf is the numba kernels' exp")
def test_expf_is_within_a_float32_ulp():
    """expf against float64 exp on a fine grid over all of [-87, 88], near 0 on both sides,
    and at the clamps: within 1.1e-7 relative (a float32 ulp near 1 is 1.19e-7); beyond
    them it gives e^-87 and e^88."""
    @jit.njit(cache=False)
    def each(x, out):
        for i in range(x.shape[0]):
            out[i] = ops.expf(x[i])

    tiny = np.geomspace(1e-12, 1, 10_001)
    x = np.concatenate([np.linspace(-87, 88, 2_000_001), tiny, -tiny, [0.0, -87.0, 88.0]]).astype(np.float32)
    out = np.empty_like(x)
    each(x, out)
    want = np.exp(x.astype(np.float64))
    assert np.all(np.abs(out - want) <= 1.1e-7 * want)
    beyond = np.array([-88.0, -1e4, -np.inf, 89.0, 1e4, np.inf], np.float32)
    out = np.empty_like(beyond)
    each(beyond, out)
    assert np.all(out[:3] == out[:1]) and np.all(out[3:] == out[3:4])
    assert abs(out[0] / np.exp(-87.0) - 1) < 1.1e-7 and abs(out[3] / np.exp(88.0) - 1) < 1.1e-7


@pytest.mark.parametrize("shape", [(1, 1536), (128, 8960), (3, 4, 64)])
def test_swiglu_matches_numpy(shape):
    """silu(gate) * up = gate / (1 + e^-gate) * up over gates from -100 to 100: within
    3e-7 relative of float64 (silu within 2e-7, one more rounding for the product; numpy's
    own float32 is within 2.2e-7 + 1.2e-7), so within 6e-7 of numpy's; at -100, e^100 is
    past expf's clamp: -6e-37 up (|up| < 6 here) where numpy, overflowing to inf, gives -0."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 30, shape[:-1] + (1,))).astype(np.float32)
    x.reshape(-1)[:4] = [-100.0, 100.0, 0.0, -0.0]
    up = rng.standard_normal(shape).astype(np.float32)
    with np.errstate(over="ignore"):
        got, ref = ops.swiglu(x, up), ops.swiglu_np(x, up)
    assert got.shape == ref.shape and got.dtype == np.float32
    exact = x / (1 + np.exp(-x.astype(np.float64))) * up
    np.testing.assert_allclose(got, exact, rtol=3e-7, atol=4e-36)
    np.testing.assert_allclose(got, ref, rtol=6e-7, atol=4e-36)


@pytest.mark.parametrize("shape", [(1, 2048), (128, 2048)])
def test_geglu_matches_numpy(shape):
    """gelu(gate) * up, gelu(x) = x / (1 + e^-2u), u = sqrt(2/pi) (x + 0.044715 x^3):
    0.5 x (1 + tanh u) rewritten on expf, against float64 (within 2e-6 relative) and
    numpy's float32 form, gates from -30 to 30.  numpy's 1 + tanh(u) cancels where
    tanh(u) ~ -1 (x below ~-3, the gate ~0): off by up to 10 % there, 1.5e-7 absolute
    (times |up| < 5), so the comparison with it is absolute."""
    rng = np.random.default_rng(sum(shape) + 1)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10, shape[:-1] + (1,))).astype(np.float32)
    x.reshape(-1)[:4] = [-30.0, 30.0, 0.0, -0.0]
    up = rng.standard_normal(shape).astype(np.float32)
    got, ref = ops.geglu(x, up), ops.geglu_np(x, up)
    assert got.shape == ref.shape and got.dtype == np.float32
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3))) * up
    np.testing.assert_allclose(got, exact, rtol=2e-6, atol=1e-11)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 576), (7, 640), (3, 4, 64)])
def test_rms_norm_matches_numpy(shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 300, shape[:-1] + (1,))).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    got, ref = ops.rms_norm(x, w, 1e-6), ops.rms_norm_np(x, w, 1e-6)
    assert got.shape == ref.shape and got.dtype == np.float32
    # same float64 mean; only the order of its additions differs
    np.testing.assert_allclose(got, ref, rtol=2e-7, atol=0)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("rot_dim", [64, 32])
def test_rope_matches_numpy(neox, rot_dim):
    rng = np.random.default_rng(rot_dim + neox)
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    cos, sin = ops.rope_cache(np.arange(100, 105), rot_dim, 10000.0)
    got, ref = ops.rope(x, cos, sin, neox), ops.rope_np(x, cos, sin, neox)
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got, x)


@pytest.mark.parametrize("vocab", [49152, 262144])
def test_top_k_matches_numpy(vocab):
    """The one-pass top-k (sampling's candidates) picks the same ids as np.argpartition
    on distinct logits, and on ties the k largest values, lowest ids first."""
    rng = np.random.default_rng(vocab)
    x = (rng.standard_normal(vocab) * 3).astype(np.float32)
    for k in (1, 40, 1000):
        assert np.array_equal(ops.top_k(x, k), ops.top_k_np(x, k)), k
    ties = np.round(x).astype(np.float32)              # a few dozen distinct values
    got = ops.top_k(ties, 40)
    assert np.array_equal(np.sort(ties[got]), np.sort(ties)[-40:])
    boundary = ties[got].min()
    above = np.flatnonzero(ties > boundary)
    at = np.flatnonzero(ties == boundary)[:40 - above.size]
    assert np.array_equal(got, np.sort(np.concatenate([above, at])))
    x[5] = np.nan                                      # a broken logit is never a candidate
    assert 5 not in ops.top_k(x, 40)
