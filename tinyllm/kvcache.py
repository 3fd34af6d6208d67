"""The KV cache: every layer's keys and values for the tokens seen so far.

Attention at position p needs K and V of positions 0..p.  Recomputing them
each step would cost a full forward pass per token, so we keep them:

    k[layer]: [n_cells, n_head_kv, head_dim_k]     one row ("cell") per position
    v[layer]: [n_cells, n_head_kv, head_dim_v]

Memory grows in chunks of `chunk` cells as the conversation grows, up to n_ctx
(llama.cpp reserves all n_ctx cells up front).  Bytes per cell per layer:
n_head_kv * (head_dim_k + head_dim_v) * bytes_per_element.
"""

from __future__ import annotations

import numpy as np

from .errors import TinyLLMError

KV_DTYPES = {"f32": np.float32, "f16": np.float16}


class KVCache:
    def __init__(self, n_layer: int, n_head_kv: int, head_dim_k: int, head_dim_v: int,
                 n_ctx: int, kv_type: str = "f16", chunk: int = 256):
        if kv_type not in KV_DTYPES:
            raise TinyLLMError(f"KV cache type {kv_type!r} not supported (supported: {', '.join(KV_DTYPES)})")
        self.n_layer, self.n_head_kv, self.n_ctx, self.chunk = n_layer, n_head_kv, n_ctx, chunk
        self.kv_type, self.dtype = kv_type, KV_DTYPES[kv_type]
        self.head_dim_k, self.head_dim_v = head_dim_k, head_dim_v
        self.n_cells = 0                         # cells allocated per layer
        self.n_used = 0                          # positions stored (the same for every layer)
        self.k = [np.empty((0, n_head_kv, head_dim_k), self.dtype) for _ in range(n_layer)]
        self.v = [np.empty((0, n_head_kv, head_dim_v), self.dtype) for _ in range(n_layer)]

    def _grow(self, n_needed: int) -> None:
        n_new = min(self.n_ctx, -(-n_needed // self.chunk) * self.chunk)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = np.empty((n_new,) + old.shape[1:], self.dtype)
                new[:self.n_cells] = old[:self.n_cells]
                store[i] = new
        self.n_cells = n_new

    def store(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v ([T, n_head_kv, head_dim]) for positions pos..pos+T-1."""
        end = pos + k.shape[0]
        if end > self.n_ctx:
            raise TinyLLMError(f"context full: {end} tokens > n_ctx {self.n_ctx}")
        if end > self.n_cells:
            self._grow(end)
        self.k[layer][pos:end] = k
        self.v[layer][pos:end] = v
        if layer == self.n_layer - 1:
            self.n_used = end

    def keys(self, layer: int, n: int) -> np.ndarray:
        return self.k[layer][:n]

    def values(self, layer: int, n: int) -> np.ndarray:
        return self.v[layer][:n]

    def truncate(self, n: int) -> None:
        """Forget positions >= n (the cells stay allocated for reuse)."""
        self.n_used = min(self.n_used, n)

    @property
    def bytes_per_cell(self) -> int:
        return self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * np.dtype(self.dtype).itemsize

    @property
    def nbytes_allocated(self) -> int:
        return self.n_cells * self.bytes_per_cell

    @property
    def nbytes_used(self) -> int:
        return self.n_used * self.bytes_per_cell
