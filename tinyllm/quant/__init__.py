"""Quantized weight matrices: dequantize them, and multiply by them without dequantizing.

    w = QTensor(gguf.raw(name), info.ggml_type, n_cols)   # zero-copy over the file map
    y = linear(x, w)              # x (n_cols,) -> (n_rows,), or (T, n_cols) -> (T, n_rows)
    e = w.rows(token_ids)         # embedding lookup: dequantizes just those rows

One module per family of formats (float, q8_0, q4, q5, kquants, iq4) holds the
block layout, a numpy reference dequantizer (bit-exact with gguf-py), the numpy
matmul fallback, and its numba pieces: `unpack_row` for prefill and the `dot4`s for
decode, which rows.py's format-agnostic drivers turn into that format's kernels.
activations.py rounds x the way llama.cpp does before each kind of dot product.

numerics (per call) says what x looks like inside the dot products:
    "llama"   x rounded everywhere, as llama.cpp does (the default): the formats with int8
              kernels (Q8_0 Q4_0 Q4_1 Q5_0 Q4_K Q6_K) multiply in int8, one token or many
    "decode"  x rounded only in one-token steps over those formats; x as it is elsewhere
    "exact"   x as it is everywhere: what llama.cpp computes on an F32 copy of the weights
(activations.py says what each is for.)
"""

from __future__ import annotations

import numpy as np

from ..errors import TinyLLMError
from ..jit import call_serial
from . import float as _float, q4, q5, q8_0, kquants, iq4
from .common import F16_TO_F32, QuantFormat, row_chunks

NUMERICS = ("decode", "exact", "llama")

# name -> QuantFormat, in the order they are listed to users
FORMATS: dict[str, QuantFormat] = {}
for _mod in (_float, q8_0, q4, q5, kquants, iq4):
    for _f in _mod.FORMATS:
        FORMATS[_f.name] = _f
_BY_TYPE = {f.ggml_type: f for f in FORMATS.values()}
# the formats with int8 decode kernels, by ggml type id
INT8_DECODE_TYPES = tuple(f.ggml_type for f in FORMATS.values() if f.int8_decode)

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
        self._w = f.weight_view(raw)     # what the numba kernels read (a view)
        self._none = self._w[:0]         # "no matrix" in a matvec's W1/W2 slots, of _w's type
        self._serial = self.nbytes < SERIAL_BELOW_BYTES
        self._matvecs = {}               # (numerics, decode) -> one-row kernel or None: matvec()
        self._plans = {}                 # how linears() runs this and its neighbours, by call

    def __repr__(self):
        return f"QTensor({self.type_name}, {self.n_rows}x{self.n_cols})"

    def dequantize(self) -> np.ndarray:
        return dequantize(self.raw, self.ggml_type)

    def matvec(self, numerics: str, decode: bool):
        """The kernel one row of x takes under `numerics` (None: the prefill path).  x is
        rounded to 8 bits under "llama", and under "decode" in one-token steps over the
        formats with int8 decode kernels.  Looked up once per (numerics, decode): a decode
        step asks ~200 times."""
        key = (numerics, decode)
        if key not in self._matvecs:
            int8, plain = self.fmt.matvecs(numerics)
            self._matvecs[key] = int8 if rounds_x(numerics, decode, self.fmt) else plain
        return self._matvecs[key]

    def rows(self, ids) -> np.ndarray:
        """float32 (len(ids), n_cols): dequantize only the rows asked for (embedding lookup)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            raise IndexError(f"row id out of range 0..{self.n_rows - 1}")
        return dequantize(self.raw[ids], self.ggml_type)


def rounds_x(numerics: str, decode: bool, f: QuantFormat) -> bool:
    """Whether x is rounded to 8 bits before the products: always under "llama", and under
    "decode" in one-token steps over the formats with int8 decode kernels."""
    return numerics == "llama" or (numerics == "decode" and decode and bool(f.int8_decode))


def linear_exact_np(w: QTensor, x: np.ndarray) -> np.ndarray:
    """The numpy fallback: dequantize a few MiB of rows at a time and let BLAS multiply."""
    out = np.empty((x.shape[0], w.n_rows), np.float32)
    for r0, r1 in row_chunks(w.n_rows, w.n_cols, x.shape[0]):
        out[:, r0:r1] = x @ dequantize(w.raw[r0:r1], w.ggml_type).T
    return out


def linear(x: np.ndarray, w: QTensor, out=None, decode: bool = False,
           numerics: str = "llama") -> np.ndarray:
    """y = x @ W^T.   x (n_cols,) -> (n_rows,)   or   x (T, n_cols) -> (T, n_rows).

    decode=True says this is a one-token step; `numerics` (module docstring) says whether
    x is rounded to 8 bits first, as llama.cpp does, for int8 dot products."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    matvec = w.matvec(numerics, decode) if x.size == w.n_cols else None
    if matvec is not None:           # one row: straight to the fused kernel (saves ~5 us a call)
        y = np.empty((*x.shape[:-1], w.n_rows), np.float32) if out is None else out
        # ravel: a view of these contiguous arrays, as reshape(-1) is, for a third of its cost
        if w._serial:
            call_serial(matvec, w._w, w._none, w._none, x.ravel(), y.ravel(), F16_TO_F32)
        else:
            matvec(w._w, w._none, w._none, x.ravel(), y.ravel(), F16_TO_F32)
        return y
    f = w.fmt
    rounded = rounds_x(numerics, decode, f)
    shape = x.shape[:-1] + (w.n_rows,)
    x2 = x.reshape(-1, w.n_cols)                     # (T, n), a view
    if out is None:
        out = np.empty(shape, np.float32)
    y2 = out.reshape(x2.shape[0], w.n_rows)          # a view when out is contiguous
    if f.prefill is None:                            # no numba (or F32 prefill): numpy
        y2[:] = f.linear_np(w.raw, x2) if rounded else linear_exact_np(w, x2)
    elif rounded and f.prefill_int8 is not None:     # T tokens, int8 dot products
        f.prefill_int8(w._w, x2, y2, F16_TO_F32)
    elif w._serial and x2.shape[0] == 1:
        call_serial(f.prefill, w._w, x2, y2, f.act_kind(rounded), F16_TO_F32, f.aux)
    else:
        f.prefill(w._w, x2, y2, f.act_kind(rounded), F16_TO_F32, f.aux)
    return out


def linears(x: np.ndarray, *ws: QTensor, decode: bool = False, numerics: str = "llama") -> list:
    """[x @ W^T for W in ws]: several matrices that multiply the same x (a layer's q, k, v;
    its gate and up).  In a one-token step, neighbours in ws that take the same kernel
    (same format and width) go through it together, up to three at a time, into one
    output whose slices are returned (rows.matvec_rows: one parallel region, not one each)."""
    if x.size != ws[0].n_cols:                       # T tokens: one matmul each
        return [linear(x, w, decode=decode, numerics=numerics) for w in ws]
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    plan = ws[0]._plans.get((ws, numerics, decode))
    if plan is None:
        plan = ws[0]._plans[(ws, numerics, decode)] = _stack_plan(ws, numerics, decode)
    ys, xr = [], x.ravel()
    for matvec, args, n_rows, cuts, serial in plan:
        if matvec is None:                           # no one-row kernel: linear's other paths
            ys.append(linear(x, args[0], decode=decode, numerics=numerics))
            continue
        y = np.empty((*x.shape[:-1], n_rows), np.float32)
        if serial:
            call_serial(matvec, *args, xr, y.ravel(), F16_TO_F32)
        else:
            matvec(*args, xr, y.ravel(), F16_TO_F32)
        ys.extend(y[..., a:b] for a, b in cuts)
    return ys


def _stack_plan(ws, numerics, decode) -> list:
    """How linears() runs ws in a one-token step: a list of (kernel, its three weight
    arguments, rows out, each matrix's slice of them, serial?); kernel None: linear()."""
    plan, i = [], 0
    while i < len(ws):
        matvec, j = ws[i].matvec(numerics, decode), i + 1
        while (matvec is not None and j < len(ws) and j - i < 3 and ws[j].n_cols == ws[i].n_cols
               and ws[j].matvec(numerics, decode) is matvec):
            j += 1
        group = ws[i:j]
        if matvec is None:
            plan.append((None, group, 0, (), False))
        else:
            args = [w._w for w in group] + [group[0]._none] * (3 - len(group))
            cuts, r = [], 0
            for w in group:
                cuts.append((r, r + w.n_rows))
                r += w.n_rows
            plan.append((matvec, args, r, cuts, sum(w.nbytes for w in group) < SERIAL_BELOW_BYTES))
        i = j
    return plan


__all__ = ["QTensor", "linear", "linears", "dequantize", "supported_types", "FORMATS", "NUMERICS"]
