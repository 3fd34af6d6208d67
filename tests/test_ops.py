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
