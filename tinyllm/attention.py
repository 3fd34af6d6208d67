"""Scaled dot-product attention over the KV cache, with grouped-query heads.

    out_h = softmax(q_h K_g^T * scale + mask) V_g        g = h // (n_head / n_head_kv)

Grouped-query attention (Ainslie et al. 2023): n_head query heads share n_head_kv
key/value heads, consecutive query heads sharing one KV head (as ggml broadcasts).
The mask is causal (query at position p sees keys 0..p) and, for sliding-window
layers, also hides keys older than `window` positions.
"""

from __future__ import annotations

import numpy as np

from .ops import softmax


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, scale: float,
              window: int | None = None, softcap: float | None = None) -> np.ndarray:
    """q [T, n_head, Dk] for positions pos..pos+T-1; k [n_kv, n_head_kv, Dk], v [n_kv, n_head_kv, Dv]
    -> [T, n_head, Dv].   The "classic" path: materialises scores [n_head, T, n_kv]."""
    T, n_head, _ = q.shape
    n_kv, n_head_kv, dv = v.shape
    group = n_head // n_head_kv
    qg = q.reshape(T, n_head_kv, group, -1).transpose(1, 2, 0, 3)     # [Hkv, group, T, Dk]
    kf = k.astype(np.float32, copy=False).transpose(1, 2, 0)           # [Hkv, Dk, n_kv]
    vf = v.astype(np.float32, copy=False).transpose(1, 0, 2)           # [Hkv, n_kv, Dv]
    scores = (qg @ kf[:, None]) * np.float32(scale)                    # [Hkv, group, T, n_kv]
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    q_pos = pos + np.arange(T)[:, None]                                # [T, 1]
    k_pos = np.arange(n_kv)[None, :]                                   # [1, n_kv]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= k_pos > q_pos - window
    scores = np.where(visible, scores, -np.inf)
    out = softmax(scores) @ vf[:, None]                                # [Hkv, group, T, Dv]
    return out.transpose(2, 0, 1, 3).reshape(T, n_head, dv)
