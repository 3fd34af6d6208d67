"""Quantized weight matrices: dequantize them, and multiply by them without dequantizing.

    w = QTensor(gguf.raw(name), info.ggml_type, n_cols)   # zero-copy over the file map
    y = linear(x, w)              # x (n_cols,) -> (n_rows,), or (T, n_cols) -> (T, n_rows)
    e = w.rows(token_ids)         # embedding lookup: dequantizes just those rows

One module per family of formats (float, q8_0, q4, q5, kquants, iq4) holds the
block layout, a numpy reference dequantizer (bit-exact with gguf-py), the numpy
matmul fallback, and a numba `unpack_row`.  kernels.py holds the one numba kernel
all block formats share; activations.py rounds x the way llama.cpp does before
each kind of dot product.
"""

from __future__ import annotations

import numpy as np

from ..errors import TinyLLMError
from ..jit import HAVE_NUMBA, call_serial
from . import decode, float as _float, q4, q5, q8_0, kquants, iq4
from .activations import ROUND_LIKE_LLAMA_CPP
from .common import F16_TO_F32, QuantFormat, row_chunks

# name -> QuantFormat, in the order they are listed to users
FORMATS: dict[str, QuantFormat] = {}
for _mod in (_float, q8_0, q4, q5, kquants, iq4):
    for _f in _mod.FORMATS:
        FORMATS[_f.name] = _f
_BY_TYPE = {f.ggml_type: f for f in FORMATS.values()}
if HAVE_NUMBA:
    from .kernels import linear_blocks
    for _f in FORMATS.values():
        if _f.unpack_row is not None:
            _f.kernel = linear_blocks

# Matrix-vector products on matrices smaller than this run on one thread: waking the
# other threads costs more than it saves.  Measured on an idle 2-core machine, a 69 KB
# Q4_1 matvec (SmolLM2's attn_k) takes 13.6 us on two threads and 19.4 us on one, so
# the threshold is low; on a busy machine a parallel call can wait a whole time slice.
SERIAL_BELOW_BYTES = 32 * 1024


def supported_types() -> list[str]:
    return list(FORMATS)


def _format(ggml_type: int) -> QuantFormat:
    f = _BY_TYPE.get(int(ggml_type))
    if f is None:
        try:
            from ..ggml_types import GGMLQuantizationType
            name = GGMLQuantizationType(int(ggml_type)).name
        except ValueError:
            name = f"id {int(ggml_type)}"
        raise TinyLLMError(f"tensor type {name} is not supported "
                           f"(supported: {', '.join(supported_types())})")
    return f


def dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """Numpy reference: uint8 (..., k * type_size) -> float32 (..., k * block_size)."""
    f = _format(ggml_type)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.shape[-1] % f.type_size:
        raise ValueError(f"{f.name}: {raw.shape[-1]} bytes is not a whole number of blocks")
    out = f.dequantize_blocks(raw.reshape(-1, f.type_size))
    return out.reshape(*raw.shape[:-1], raw.shape[-1] // f.type_size * f.block_size)


class QTensor:
    """A 2-D weight matrix (n_rows, n_cols) stored in a ggml format, over the file's bytes."""

    def __init__(self, raw: np.ndarray, ggml_type: int, n_cols: int):
        f = _format(ggml_type)
        n_cols = int(n_cols)
        if n_cols % f.block_size:
            raise TinyLLMError(f"{f.name} row of {n_cols} is not a multiple of {f.block_size}")
        row_bytes = n_cols // f.block_size * f.type_size
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != row_bytes:
            raw = raw.reshape(-1).view(np.uint8).reshape(-1, row_bytes)
        self.raw = raw
        self.fmt = f
        self.ggml_type, self.type_name = f.ggml_type, f.name
        self.n_rows, self.n_cols = raw.shape[0], n_cols
        self.nbytes = raw.nbytes
        self.shape = (self.n_rows, self.n_cols)
        self._w = f.weight_view(raw)     # what the numba kernel reads (a view)
        self._kernel, self._kernel_args = f.kernel, f.kernel_args
        self._serial = self.nbytes < SERIAL_BELOW_BYTES
        # one-token matvec straight from the bytes (decode.py) where a fused dot exists
        self._decode = (decode.matvec if HAVE_NUMBA and not ROUND_LIKE_LLAMA_CPP
                        and f.ggml_type in decode.FUSED_TYPES else None)

    def __repr__(self):
        return f"QTensor({self.type_name}, {self.n_rows}x{self.n_cols})"

    def dequantize(self) -> np.ndarray:
        return dequantize(self.raw, self.ggml_type)

    def rows(self, ids) -> np.ndarray:
        """float32 (len(ids), n_cols): dequantize only the rows asked for (embedding lookup)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            raise IndexError(f"row id out of range 0..{self.n_rows - 1}")
        return dequantize(self.raw[ids], self.ggml_type)


def linear_exact_np(w: QTensor, x: np.ndarray) -> np.ndarray:
    """The numpy fallback: dequantize a few MiB of rows at a time and let BLAS multiply."""
    out = np.empty((x.shape[0], w.n_rows), np.float32)
    for r0, r1 in row_chunks(w.n_rows, w.n_cols, x.shape[0]):
        out[:, r0:r1] = x @ dequantize(w.raw[r0:r1], w.ggml_type).T
    return out


def linear(x: np.ndarray, w: QTensor, out=None) -> np.ndarray:
    """y = x @ W^T.   x (n_cols,) -> (n_rows,)   or   x (T, n_cols) -> (T, n_rows).

    x is used as it is, unless TINYLLM_ACTIVATIONS=llama asks for llama.cpp's rounding
    (see activations.py)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if w._decode is not None and not w._serial and x.size == w.n_cols:
        # decode fast path: one token, straight to the fused kernel (saves ~5 us a call)
        y = np.empty(x.shape[:-1] + (w.n_rows,), np.float32) if out is None else out
        w._decode(w._w, x.reshape(-1), y.reshape(-1), w.ggml_type, F16_TO_F32)
        return y
    shape = x.shape[:-1] + (w.n_rows,)
    x2 = x.reshape(-1, w.n_cols)                     # (T, n), a view
    if out is None:
        out = np.empty(shape, np.float32)
    y2 = out.reshape(x2.shape[0], w.n_rows)          # a view when out is contiguous
    if w._kernel is None:
        y2[:] = w.fmt.linear_np(w.raw, x2) if ROUND_LIKE_LLAMA_CPP else linear_exact_np(w, x2)
    elif w._decode is not None and x2.shape[0] == 1:
        args = (w._w, x2[0], y2[0], w.ggml_type, F16_TO_F32)
        call_serial(w._decode, *args) if w._serial else w._decode(*args)
    elif w._serial and x2.shape[0] == 1:
        call_serial(w._kernel, w._w, x2, y2, *w._kernel_args)
    else:
        w._kernel(w._w, x2, y2, *w._kernel_args)
    return out


__all__ = ["QTensor", "linear", "dequantize", "supported_types", "FORMATS", "HAVE_NUMBA"]
