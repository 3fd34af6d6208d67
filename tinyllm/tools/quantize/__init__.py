"""Quantizing float32 weights into GGUF block formats: tinyllm's own quantizers.

    raw = quantize_rows(x, "Q4_K")     # x (n_rows, n_cols) float32 -> uint8 (n_rows, row_bytes)

row_bytes = n_cols / block_size * type_size, exactly the bytes a GGUF stores for that
tensor type (tinyllm.quant reads them back).  These re-implement llama.cpp's reference
quantizers -- what `llama-quantize` uses without an importance matrix -- in numpy,
vectorised over all blocks of a chunk of rows: blocks.py (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1), kquants.py (Q2_K..Q6_K), iq4.py (IQ4_NL).  The float32 operations
follow llama.cpp's order, so the bytes are llama.cpp's own: tests/test_quantize.py checks
them (sha256) for every type on a synthetic model with hard cases.
"""

from __future__ import annotations

import numpy as np

from ...ggml_types import GGML_QUANT_SIZES, GGMLQuantizationType
from . import blocks, iq4, kquants

# name -> quantize_blocks: (n, block_size) float32 -> (n, type_size) uint8
_QUANTIZERS = {
    "F32": blocks.quantize_f32,
    "F16": blocks.quantize_f16,
    "BF16": blocks.quantize_bf16,
    "Q8_0": blocks.quantize_q8_0,
    "Q4_0": blocks.quantize_q4_0,
    "Q4_1": blocks.quantize_q4_1,
    "Q5_0": blocks.quantize_q5_0,
    "Q5_1": blocks.quantize_q5_1,
    "Q2_K": kquants.quantize_q2_K,
    "Q3_K": kquants.quantize_q3_K,
    "Q4_K": kquants.quantize_q4_K,
    "Q5_K": kquants.quantize_q5_K,
    "Q6_K": kquants.quantize_q6_K,
    "IQ4_NL": iq4.quantize_iq4_nl,
}
QUANTIZABLE = tuple(_QUANTIZERS)

# Weights per chunk of rows.  The k-quant searches keep ~15 float32 temporaries of the
# chunk's size alive, so 2^18 weights (1 MiB each) bounds them to a few tens of MiB and
# keeps them mostly in cache.
CHUNK = 1 << 18


def block_shape(type_name: str) -> tuple[int, int]:
    """(block_size, type_size) of a quantizable type."""
    if type_name not in _QUANTIZERS:
        raise ValueError(f"cannot quantize to {type_name!r} (can: {', '.join(QUANTIZABLE)})")
    return tuple(GGML_QUANT_SIZES[GGMLQuantizationType[type_name]])


def quantize_rows(x: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (n_rows, n_cols) -> uint8 (n_rows, n_cols // block_size * type_size)."""
    block_size, type_size = block_shape(type_name)
    quantize_blocks = _QUANTIZERS[type_name]
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {x.shape}")
    n_rows, n_cols = x.shape
    if n_cols % block_size:
        raise ValueError(f"{type_name}: a row of {n_cols} is not a multiple of {block_size}")
    out = np.empty((n_rows, n_cols // block_size * type_size), np.uint8)
    step = max(1, CHUNK // max(1, n_cols))
    # inf/NaN/0-division inside the searches are masked out exactly where ggml's code
    # skips them; numpy's warnings about them are noise
    with np.errstate(all="ignore"):
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            chunk = np.ascontiguousarray(x[r0:r1], dtype=np.float32).reshape(-1, block_size)
            out[r0:r1] = quantize_blocks(chunk).reshape(r1 - r0, -1)
    return out


__all__ = ["QUANTIZABLE", "quantize_rows", "block_shape"]
