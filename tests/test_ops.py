"""The numba twins of rms_norm and rope compute what their numpy references compute."""

import numpy as np
import pytest

from tinyllm import ops



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
