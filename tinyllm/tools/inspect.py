"""`tinyllm inspect`: what a GGUF file holds, and one quantized block laid open.

    tinyllm inspect MODEL                         every tensor: type, shape, bytes, bits per weight;
                                                  totals by type; the file's totals
    tinyllm inspect MODEL --tensor NAME --block I block I of that tensor, field by field
    ... --ref F32.gguf                            beside the same weights of the unquantized file

The table comes from the header alone (the file is memory-mapped, nothing is
dequantized), so it is instant even for a multi-GiB model.

A block is the unit a format quantizes together (32 or 256 weights; one weight
for F32/F16/BF16).  Blocks are numbered through the tensor in storage order:
block I holds the flat elements I*block_size .. (I+1)*block_size - 1, i.e. row
I // blocks_per_row.  Every block format stores small integer codes q and a few
scales; the codes a sub-block can hold map to 2^bits levels, e.g. Q4_K's

    level(q) = (d * sc_j) * q - (dmin * m_j),   q = 0..15

and each weight is the level of its code.  `block_view` returns those fields and
levels; its values are computed with the same float32 operations as
tinyllm.quant.dequantize, so they equal it bit for bit (tests check this against
gguf.quants.dequantize).  The unpacking reuses tinyllm.quant's helpers; only the
float bit fields and IQ4's raw 4-bit indices are decoded here (no helper returns them).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import TinyLLMError


# ---- the table -------------------------------------------------------------------------------

@dataclass
class TensorRow:
    name: str
    type_name: str
    shape: tuple            # numpy (row-major) order: ne reversed, slowest first
    n_elements: int
    n_bytes: int

    @property
    def bpw(self) -> float:
        return 8 * self.n_bytes / self.n_elements


@dataclass
class FileSummary:
    path: str
    file_bytes: int
    header_bytes: int       # metadata + tensor index + alignment padding before the data
    padding_bytes: int      # alignment gaps between tensors inside the data section
    tensors: list           # [TensorRow] in file order
    by_type: dict           # type name -> {"count", "params", "bytes", "share"}

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bpw(self) -> float:
        """Bits per weight of the whole file (header included), as llama.cpp reports it."""
        return 8 * self.file_bytes / self.n_params


def summarize(g) -> FileSummary:
    """A GGUFFile -> its table; reads only the header."""
    infos = sorted(g.tensors.values(), key=lambda t: t.offset)
    rows = [TensorRow(t.name, t.type_name, tuple(reversed(t.ne)), t.n_elements, t.n_bytes)
            for t in infos]
    data_bytes = g.file_size - g.data_start
    by_type: dict = {}
    for r in rows:
        e = by_type.setdefault(r.type_name, {"count": 0, "params": 0, "bytes": 0})
        e["count"] += 1
        e["params"] += r.n_elements
        e["bytes"] += r.n_bytes
    for e in by_type.values():
        e["share"] = e["bytes"] / g.file_size
    padding = data_bytes - sum(r.n_bytes for r in rows)
    return FileSummary(g.path, g.file_size, g.data_start, padding, rows, by_type)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_table(s: FileSummary) -> str:
    w = max(len("tensor"), max((len(t.name) for t in s.tensors), default=0))
    shapes = [" x ".join(str(d) for d in t.shape) for t in s.tensors]
    ws = max([len("shape")] + [len(x) for x in shapes])
    lines = [f"{s.path}: {len(s.tensors)} tensors",
             f"{'tensor':<{w}}  {'type':<7} {'shape':>{ws}} {'bytes':>12} {'bpw':>7}"]
    for t, shape in zip(s.tensors, shapes):
        lines.append(f"{t.name:<{w}}  {t.type_name:<7} {shape:>{ws}} {t.n_bytes:>12,} {t.bpw:>7.3f}")
    lines += ["", f"{'type':<7} {'tensors':>7} {'params':>13} {'bytes':>13} {'bpw':>7} {'share':>7}"]
    for name, e in sorted(s.by_type.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"{name:<7} {e['count']:>7} {e['params']:>13,} {e['bytes']:>13,} "
                     f"{8 * e['bytes'] / e['params']:>7.3f} {100 * e['share']:>6.2f}%")
    lines += ["",
              f"params      {s.n_params:,}",
              f"tensor data {s.tensor_bytes:,} bytes ({_mib(s.tensor_bytes)}, "
              f"{8 * s.tensor_bytes / s.n_params:.3f} bits per weight)",
              f"header      {s.header_bytes:,} bytes (metadata, tensor index, alignment)"
              + (f"; {s.padding_bytes:,} bytes of padding between tensors" if s.padding_bytes else ""),
              f"file        {s.file_bytes:,} bytes ({_mib(s.file_bytes)}, {s.bpw:.3f} bits per weight)"]
    return "\n".join(lines)


def summary_json(s: FileSummary) -> dict:
    return {"path": s.path, "file_bytes": s.file_bytes, "header_bytes": s.header_bytes,
            "padding_bytes": s.padding_bytes, "tensor_bytes": s.tensor_bytes,
            "n_params": s.n_params, "bpw": s.bpw,
            "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape),
                         "n_elements": t.n_elements, "bytes": t.n_bytes, "bpw": t.bpw}
                        for t in s.tensors],
            "by_type": s.by_type}


# ---- one block laid open ---------------------------------------------------------------------

@dataclass
class SubBlock:
    """A run of weights that share one scale (and min): codes -> levels -> values."""
    start: int                  # first element, within the block
    codes: np.ndarray           # the stored integers, (n,)
    code_lo: int                # smallest code; levels[k] is the value of code code_lo + k
    levels: np.ndarray          # float32 (2^bits,): every value this sub-block can represent
    fields: dict = field(default_factory=dict)   # its integer scale / min and their products

    @property
    def values(self) -> np.ndarray:
        return self.levels[self.codes - self.code_lo]


@dataclass
class BlockView:
    type_name: str
    layout: str                 # the byte layout, one line
    formula: str                # how a weight is made from the fields
    raw: np.ndarray             # the block's bytes
    fields: dict                # block-level fields: name -> value (d, dmin, m, packed scales ...)
    subs: list                  # [SubBlock]

    @property
    def values(self) -> np.ndarray:
        return np.concatenate([s.values for s in self.subs])


def _codes(levels_fn, codes, lo, n_levels, **fields):
    """A SubBlock whose levels are levels_fn(k) for the codes k = lo .. lo + n_levels - 1."""
    k = np.arange(lo, lo + n_levels)
    return SubBlock(0, np.asarray(codes, np.int64), lo, levels_fn(k).astype(np.float32), fields)


def _place(subs, size):
    for i, s in enumerate(subs):
        s.start = i * size
    return subs


def _float_view(name, raw):
    """F32/F16/BF16: one weight per block; the fields are its sign, exponent and mantissa."""
    n_exp, n_man, layout = {"F32": (8, 23, "sign 1 | exponent 8 | mantissa 23 (little-endian u32)"),
                            "F16": (5, 10, "sign 1 | exponent 5 | mantissa 10 (little-endian u16)"),
                            "BF16": (8, 7, "sign 1 | exponent 8 | mantissa 7: the top half of an F32")}[name]
    bits = int.from_bytes(bytes(raw), "little")
    sign, exp, man = bits >> (n_exp + n_man), (bits >> n_man) & ((1 << n_exp) - 1), bits & ((1 << n_man) - 1)
    bias = (1 << (n_exp - 1)) - 1
    if exp == (1 << n_exp) - 1:
        value = float("nan") if man else float("inf")
        formula = "all-ones exponent: inf or nan"
    elif exp == 0:
        value = man / 2**n_man * 2.0**(1 - bias)
        formula = f"subnormal: w = (-1)^sign * mantissa/2^{n_man} * 2^{1 - bias}"
    else:
        value = (1 + man / 2**n_man) * 2.0**(exp - bias)
        formula = f"w = (-1)^sign * (1 + mantissa/2^{n_man}) * 2^(exponent - {bias})"
    value = -value if sign else value
    sub = SubBlock(0, np.array([0]), 0, np.array([value], np.float32))
    return BlockView(name, layout, formula, raw, {"sign": sign, "exponent": exp, "mantissa": man}, [sub])


def block_view(type_name: str, raw: np.ndarray) -> BlockView:
    """One block's bytes (type_size,) -> its fields, sub-blocks, levels, codes and values."""
    from ..quant import iq4, kquants, q4, q5, q8_0
    from ..quant.common import f16_field, nibbles

    raw = np.ascontiguousarray(raw, np.uint8)
    b = raw.reshape(1, -1)                   # the helpers take (n_blocks, type_size)
    f32 = np.float32
    if type_name in ("F32", "F16", "BF16"):
        return _float_view(type_name, raw)

    if type_name == "Q8_0":
        q, d = q8_0.unpack(b)
        d = f32(d[0, 0])
        sub = _codes(lambda k: k.astype(f32) * d, q[0, 0], -128, 256)
        return BlockView("Q8_0", "d f16 | qs[32] int8", "w = q * d,  q = -128..127", raw, {"d": d}, [sub])

    if type_name in ("Q4_0", "Q5_0", "IQ4_NL"):
        if type_name == "IQ4_NL":
            d = f16_field(b, 0)[0]
            codes = nibbles(b[:, 2:])[0]
            sub = _codes(lambda k: d * iq4.KVALUES[k], codes, 0, 16)
            return BlockView("IQ4_NL", "d f16 | qs[16]: 32 nibbles (low = elements 0..15, high = 16..31)",
                             "w = d * KVALUES[q],  KVALUES = " + " ".join(str(int(v)) for v in iq4.KVALUES),
                             raw, {"d": d}, [sub])
        bits, unpack = (4, q4.unpack_q4_0) if type_name == "Q4_0" else (5, q5.unpack_q5_0)
        q, d = unpack(b)
        off = 1 << (bits - 1)
        d = f32(d[0, 0])
        sub = _codes(lambda k: d * (k.astype(f32) - f32(off)), q[0, 0].astype(np.int64) + off, 0, 1 << bits)
        layout = ("d f16 | qs[16]" if bits == 4 else "d f16 | qh u32 (5th bits) | qs[16]")
        return BlockView(type_name, layout + ": low nibbles = elements 0..15, high = 16..31",
                         f"w = d * (q - {off}),  q = 0..{(1 << bits) - 1}", raw, {"d": d}, [sub])

    if type_name in ("Q4_1", "Q5_1"):
        bits, unpack = (4, q4.unpack_q4_1) if type_name == "Q4_1" else (5, q5.unpack_q5_1)
        q, d, m = unpack(b)
        d, m = f32(d[0, 0]), f32(m[0, 0])
        sub = _codes(lambda k: d * k.astype(f32) + m, q[0, 0], 0, 1 << bits)
        layout = "d f16 | m f16 | qs[16]" if bits == 4 else "d f16 | m f16 | qh u32 (5th bits) | qs[16]"
        return BlockView(type_name, layout + ": low nibbles = elements 0..15, high = 16..31",
                         f"w = d * q + m,  q = 0..{(1 << bits) - 1}", raw, {"d": d, "m": m}, [sub])

    if type_name == "IQ4_XS":
        q, sc, d, _, _ = iq4.unpack_iq4_xs_blocks(b)
        d = f32(d[0])
        codes = nibbles(b[:, 8:].reshape(1, 8, 16))[0]                 # (8, 32) indices
        subs = []
        for j in range(8):
            s = f32(d * f32(sc[0, j]))
            subs.append(_codes(lambda k, s=s: s * iq4.KVALUES[k], codes[j], 0, 16,
                               scale=int(sc[0, j]), **{"d*scale": s}))
        return BlockView("IQ4_XS", "d f16 | scales_h u16 | scales_l[4] | qs[128]: 8 sub-blocks of 32",
                         "w = (d * scale_j) * KVALUES[q],  scale_j = 6-bit - 32", raw,
                         {"d": d, "scales_h": int(b[0, 2]) | int(b[0, 3]) << 8,
                          "scales_l": bytes(b[0, 4:8]).hex(" ")}, _place(subs, 32))

    kq = {"Q2_K": (kquants.unpack_q2_K, 2, 0, "scales[16] | qs[64] | d f16 | dmin f16", slice(0, 16),
                   "16 sub-blocks of 16; scales[j] = sc_j | m_j << 4 (4 bits each)"),
          "Q3_K": (kquants.unpack_q3_K, 3, 4, "hmask[32] | qs[64] | scales[12] | d f16", slice(96, 108),
                   "16 sub-blocks of 16; 6-bit sc_j - 32 packed in 12 bytes; q = 2 bits of qs + hmask bit"),
          "Q4_K": (kquants.unpack_q4_K, 4, 0, "d f16 | dmin f16 | scales[12] | qs[128]", slice(4, 16),
                   "8 sub-blocks of 32; 6-bit sc_j and m_j packed in 12 bytes (scale_min_k4)"),
          "Q5_K": (kquants.unpack_q5_K, 5, 0, "d f16 | dmin f16 | scales[12] | qh[32] | qs[128]",
                   slice(4, 16), "8 sub-blocks of 32; 6-bit sc_j and m_j as Q4_K; 5th bit of q in qh"),
          "Q6_K": (kquants.unpack_q6_K, 6, 32, "ql[128] | qh[64] | scales[16] int8 | d f16", slice(192, 208),
                   "16 sub-blocks of 16; int8 sc_j; q = 4 bits of ql + 2 bits of qh")}
    if type_name in kq:
        unpack, bits, off, layout, sc_bytes, note = kq[type_name]
        q, sc, d, m, dmin = unpack(b)
        d = f32(d[0])
        fields = {"d": d}
        if m is not None:
            fields["dmin"] = f32(dmin[0])
        fields["scales (packed)"] = bytes(b[0, sc_bytes]).hex(" ")
        q = q[0].reshape(sc.shape[1], -1)                               # (sub-blocks, weights each)
        subs = []
        for j in range(q.shape[0]):
            # the same float32 products, in the same order, as kquants._dequantizer
            ds = f32(d * f32(sc[0, j]))
            if m is None:
                levels = (lambda k, ds=ds: ds * (k.astype(f32) - f32(off)))
                extra = {"sc": int(sc[0, j]), "d*sc": ds}
            else:
                dm = f32(fields["dmin"] * f32(m[0, j]))
                levels = (lambda k, ds=ds, dm=dm: ds * k.astype(f32) - dm)
                extra = {"sc": int(sc[0, j]), "m": int(m[0, j]), "d*sc": ds, "dmin*m": dm}
            subs.append(_codes(levels, q[j].astype(np.int64) + off, 0, 1 << bits, **extra))
        formula = (f"w = (d * sc_j) * (q - {off}),  q = 0..{(1 << bits) - 1}" if m is None else
                   f"w = (d * sc_j) * q - (dmin * m_j),  q = 0..{(1 << bits) - 1}")
        return BlockView(type_name, f"{layout}: {note}", formula, raw, fields, _place(subs, q.shape[1]))

    raise TinyLLMError(f"inspect cannot lay open {type_name} blocks")


def _block_location(t, block: int) -> tuple:
    """(row, first column, block_size, n_blocks) of block `block` of tensor t."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
    n_blocks = t.n_elements // block_size
    if not 0 <= block < n_blocks:
        raise TinyLLMError(f"block {block} is out of range: {t.name} has {n_blocks:,} blocks "
                           f"(0..{n_blocks - 1:,}) of {block_size}")
    per_row = t.ne[0] // block_size
    return block // per_row, block % per_row * block_size, block_size, type_size, n_blocks


def find_tensor(g, name: str):
    t = g.tensors.get(name)
    if t is None:
        close = difflib.get_close_matches(name, list(g.tensors), n=4, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else f"; e.g. {', '.join(list(g.tensors)[:4])}"
        raise TinyLLMError(f"no tensor {name!r} in {g.path}{hint}")
    return t


def block_bytes(g, t, block: int) -> np.ndarray:
    _, _, _, type_size, _ = _block_location(t, block)
    start = g.data_start + t.offset + block * type_size
    return np.asarray(g._bytes[start:start + type_size])


def reference_values(ref_path: str, t, block: int) -> np.ndarray:
    """The same weights in another file (the F32 original), dequantized: (block_size,)."""
    from ..gguf_file import GGUFFile
    from ..quant import FORMATS, dequantize
    rg = GGUFFile(ref_path)
    rt = rg.tensors.get(t.name)
    if rt is None:
        raise TinyLLMError(f"--ref {ref_path} has no tensor {t.name!r}")
    if rt.ne != t.ne:
        raise TinyLLMError(f"--ref {ref_path}: {t.name} has shape {rt.ne[::-1]}, not {t.ne[::-1]}")
    _, _, block_size, _, _ = _block_location(t, block)
    f = FORMATS.get(rt.type_name)
    if f is None:
        raise TinyLLMError(f"--ref {ref_path}: {t.name} is {rt.type_name}, which tinyllm cannot read")
    # the reference's own blocks that cover elements block*block_size .. +block_size
    e0, e1 = block * block_size, (block + 1) * block_size
    b0, b1 = e0 // f.block_size, -(-e1 // f.block_size)
    start = rg.data_start + rt.offset + b0 * f.type_size
    vals = dequantize(rg._bytes[start:start + (b1 - b0) * f.type_size], rt.ggml_type)
    return vals[e0 - b0 * f.block_size:e1 - b0 * f.block_size].astype(np.float32)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _row(label: str, xs, width=11, per_line=8) -> list:
    cells = [f" {x:>{width - 1}.5g}" if isinstance(x, (float, np.floating)) else f"{x:>{width}}"
             for x in xs]
    return [f"  {label if i == 0 else '':<8}" + "".join(cells[i:i + per_line])
            for i in range(0, len(cells), per_line)]


def _levels_text(s: SubBlock) -> str:
    n = len(s.levels)
    if n <= 16:
        return " ".join(_fmt(v) for v in s.levels)
    return (f"code {s.code_lo}: {_fmt(s.levels[0])}, code {s.code_lo + 1}: {_fmt(s.levels[1])}, ... "
            f"code {s.code_lo + n - 1}: {_fmt(s.levels[-1])}  (evenly spaced)")


def format_block(t, block: int, v: BlockView, ref=None) -> str:
    row, col, block_size, type_size, n_blocks = _block_location(t, block)
    lines = [f"{t.name}  {v.type_name}  shape {' x '.join(str(d) for d in t.ne[::-1])}",
             f"block {block:,} of {n_blocks:,}: row {row}, columns {col}..{col + block_size - 1}"
             f" ({block_size} weights in {type_size} bytes, {8 * type_size / block_size:.4g} bits per weight)",
             f"layout:  {v.layout}",
             f"formula: {v.formula}",
             f"bytes:   {v.raw.tobytes().hex(' ')}" if type_size <= 40 else
             f"bytes:   {v.raw[:32].tobytes().hex(' ')} ... ({type_size} bytes)"]
    for k, x in v.fields.items():
        lines.append(f"  {k:<16} {_fmt(x)}")
    err = None if ref is None else v.values.astype(np.float64) - ref.astype(np.float64)
    for j, s in enumerate(v.subs):
        if len(v.subs) > 1:
            lines.append(f"sub-block {j} (elements {s.start}..{s.start + len(s.codes) - 1}): "
                         + ", ".join(f"{k} {_fmt(x)}" for k, x in s.fields.items()))
        lines.append(f"  levels  {len(s.levels)}: {_levels_text(s)}")
        lines += _row("codes", s.codes, width=5, per_line=16)
        lines += _row("values", s.values)
        if ref is not None:
            lines += _row("ref", ref[s.start:s.start + len(s.codes)])
            lines += _row("error", err[s.start:s.start + len(s.codes)])
    if ref is not None:
        lines.append(f"RMSE {np.sqrt(np.mean(err ** 2)):.6g}   max |error| {np.abs(err).max():.6g}"
                     f"   (reference rms {np.sqrt(np.mean(ref.astype(np.float64) ** 2)):.6g})")
    return "\n".join(lines)


def block_json(t, block: int, v: BlockView, ref=None) -> dict:
    row, col, block_size, type_size, n_blocks = _block_location(t, block)
    conv = (lambda x: float(x) if isinstance(x, (float, np.floating)) else x)
    out = {"tensor": t.name, "type": v.type_name, "block": block, "n_blocks": n_blocks, "row": row,
           "col": col, "layout": v.layout, "formula": v.formula, "bytes": v.raw.tobytes().hex(),
           "fields": {k: conv(x) for k, x in v.fields.items()},
           "sub_blocks": [{"start": s.start, "fields": {k: conv(x) for k, x in s.fields.items()},
                           "code_lo": s.code_lo, "levels": s.levels.tolist(),
                           "codes": s.codes.tolist(), "values": s.values.tolist()} for s in v.subs],
           "values": v.values.tolist()}
    if ref is not None:
        err = v.values.astype(np.float64) - ref.astype(np.float64)
        out.update(ref=ref.tolist(), error=err.tolist(), rmse=float(np.sqrt(np.mean(err ** 2))))
    return out


# ---- the verb --------------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("model", help="registry name or path to a .gguf file")
    p.add_argument("--tensor", default=None, help="lay open one block of this tensor")
    p.add_argument("--block", type=int, default=None, help="with --tensor: block index (default 0)")
    p.add_argument("--ref", default=None, help="with --tensor: the unquantized (F32) file to compare with")
    p.add_argument("--json", action="store_true")


def run(args):
    import sys

    from ..gguf_file import GGUFFile
    from ..registry import resolve
    g = GGUFFile(resolve(args.model, pull_if_missing=True, log=lambda m: print(m, file=sys.stderr)))
    if args.tensor is None:
        if args.ref or args.block is not None:
            raise TinyLLMError(f"{'--ref' if args.ref else '--block'} needs --tensor NAME")
        s = summarize(g)
        print(json.dumps(summary_json(s)) if args.json else format_table(s))
        return
    t = find_tensor(g, args.tensor)
    block = args.block or 0
    v = block_view(t.type_name, block_bytes(g, t, block))
    ref = reference_values(args.ref, t, block) if args.ref else None
    print(json.dumps(block_json(t, block, v, ref)) if args.json else format_block(t, block, v, ref))
