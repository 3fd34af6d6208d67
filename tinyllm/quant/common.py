"""Shared pieces of the quantized formats: f16 scales, row chunking, the format record.

Every format stores a matrix as rows of blocks.  A block packs `block_size`
weights into `type_size` bytes: small integers plus one or a few f16 scales.
Kernels read the file's bytes directly (a uint8 view of shape
(n_rows, row_bytes)) so a model costs its file size in memory, no more.
"""

from __future__ import annotations

import numpy as np

from ..jit import HAVE_NUMBA, njit
from .activations import ROUND_LIKE_LLAMA_CPP

# f16 bit pattern -> float32 value, for all 65536 patterns (256 KiB).  Scales are
# read as two bytes and looked up here; exact, and cheaper than bit fiddling.
F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# ---- numpy helpers (reference dequantizers and the no-numba path) -------------------------
def f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian f16 at byte `offset` of each block, as float32: (n,)."""
    bits = blocks[:, offset].astype(np.uint16) | (blocks[:, offset + 1].astype(np.uint16) << 8)
    return F16_TO_F32[bits]


def u32_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian uint32 at byte `offset` of each block: (n,)."""
    b = blocks[:, offset:offset + 4].astype(np.uint32)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., n) bytes -> (..., 2n): the n low nibbles, then the n high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def row_chunks(n_rows: int, n_cols: int, n_tokens: int = 1, budget: int = 1 << 21):
    """Row ranges small enough that a chunk's float32 temporaries stay ~8 MiB."""
    step = max(1, budget // max(1, n_cols * max(1, min(n_tokens, 8))))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


# ---- numba helpers ---------------------------------------------------------------------------
@njit(inline="always")
def f16_at(row, o, lut):
    """float32 value of the little-endian f16 at row[o], row[o+1]."""
    return lut[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


# ---- the format record -----------------------------------------------------------------------
# How x is rounded before the dot (llama.cpp's vec_dot type), as kernels.quantize_act's `kind`.
ACT_KINDS = {"q8_0": 0, "q8_1": 1, "q8_K": 2}
ACT_EXACT = 3            # x as it is (float32)
ACT_EXACT_SUMS = 4       # x as it is, plus its per-32 block sums (the m terms of Q4_1/Q5_1)
ACT_OWN_TYPE = 5         # F16/BF16 weights: x rounded to half / bfloat16, as llama.cpp does


def act_kind(act: str, mins) -> int:
    """The activation handling a kernel gets: llama.cpp's rounding, or x unchanged."""
    if ROUND_LIKE_LLAMA_CPP:
        return ACT_KINDS.get(act, ACT_OWN_TYPE if act in ("f16", "bf16") else ACT_EXACT)
    return ACT_EXACT_SUMS if mins else ACT_EXACT


class QuantFormat:
    """Everything tinyllm knows about one ggml tensor type.

    dequantize_blocks(blocks uint8 (n, type_size)) -> float32 (n, block_size): numpy reference,
        bit-exact with gguf.quants.dequantize.
    linear_np(raw, x (T, n_cols)) -> (T, n_rows): numpy matmul with the same activation
        quantization as the numba kernels (the fallback, and the tests' tight oracle).
    unpack_row(row, wf, gm, lut, aux): numba; one row's bytes -> its float32 weights wf
        (n_cols,), and for Q4_1/Q5_1 (mins="q8_1") the offsets m per block in gm (n_cols/32,),
        which kernels.py multiplies by Q8_1's s.  None for the float types.
    act: how activations are rounded before the dot ("f32", "f16", "bf16", "q8_0",
        "q8_1", "q8_K"): llama.cpp's vec_dot type for this weight type.
    aux: a constant table unpack_row needs (IQ4's levels).
    """

    def __init__(self, name, ggml_type, block_size, type_size, act, dequantize_blocks,
                 linear_np, unpack_row=None, mins=None, aux=None,
                 weight_view=None, kernel=None):
        self.name, self.ggml_type = name, int(ggml_type)
        self.block_size, self.type_size, self.act = block_size, type_size, act
        self.dequantize_blocks = dequantize_blocks
        self.linear_np = linear_np
        self.unpack_row, self.mins = unpack_row, mins
        self.aux = aux if aux is not None else np.zeros(1, np.float32)
        self.act_kind = act_kind(act, mins)
        # kernel(w, x (T, n), y (T, R), *kernel_args): numba, or None (numpy path).  Block
        # formats share kernels.linear_blocks (attached in __init__.py).
        self.kernel = kernel if HAVE_NUMBA else None
        self.kernel_args = (self.ggml_type, self.act_kind, F16_TO_F32, self.aux)
        # Some kernels want the bytes under another dtype (F16: uint16 rows); a view, no copy.
        self.weight_view = weight_view or (lambda raw: raw)

    def matvecs(self):
        """(int8, plain): this format's one-row kernels, or None where it has none.
          int8   x rounded to 8 bits, int8 dot products (decode_q8.py): decode steps
          plain  x as it is: decode.py under TINYLLM_ACTIVATIONS=exact; F32 always
                 (float.matvec_f32)
        Other single rows take the prefill kernel: one compiled kernel less in memory."""
        from . import decode, decode_q8
        from .activations import ROUND_IN_DECODE
        from .float import matvec_f32
        if not HAVE_NUMBA:
            return None, None
        int8 = decode_q8.matvec if ROUND_IN_DECODE and self.ggml_type in decode_q8.TYPES else None
        plain = None
        if self.ggml_type == 0:
            plain = matvec_f32
        elif not ROUND_IN_DECODE and self.ggml_type in decode.FUSED_TYPES:
            plain = decode.matvec
        return int8, plain

    def kernels(self):
        return [k for k in (self.kernel, *self.matvecs()) if k is not None]

    def warmup(self):
        """Run the kernels once on a tiny matrix: compiles or loads the cache for exactly
        the argument types real calls use."""
        n_cols = self.block_size if self.block_size > 1 else 32
        raw = np.zeros((2, n_cols // self.block_size * self.type_size), np.uint8)
        raw.flags.writeable = False      # as the model's weights are: a read-only file map
        if self.kernel is not None:
            self.kernel(self.weight_view(raw), np.zeros((1, n_cols), np.float32),
                        np.zeros((1, 2), np.float32), *self.kernel_args)
        for matvec in filter(None, self.matvecs()):
            matvec(self.weight_view(raw), np.zeros(n_cols, np.float32), np.zeros(2, np.float32),
                   self.ggml_type, F16_TO_F32)

    def __repr__(self):
        return f"QuantFormat({self.name})"
