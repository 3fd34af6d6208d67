"""Quantize a whole GGUF file: read every tensor, pick its type, write a new GGUF.

    report = quantize_model("model.F32.gguf", "model.Q4_K_M.gguf", "Q4_K_M")
    print(report.table())

The pipeline, one tensor at a time and a few MiB of rows at a time:

    source rows (mmap) -> float32 (tinyllm.quant.dequantize, unless already F32)
                       -> quantize_rows(rows, type)  (type from mixes.choose_types)
                       -> appended to the output file

Memory stays bounded by one chunk of rows (CHUNK_VALUES floats and their quantized
bytes), not by the model or its largest tensor: the output is written as it is
made.  gguf.GGUFWriter writes the header (metadata and tensor infos, whose offsets
it computes from the sizes we declare); the tensor data is then appended in the
same order, each tensor padded to the file's alignment, as the format requires.

A tensor whose chosen type equals its current type is copied byte for byte (as
llama.cpp does), so re-quantizing never rounds twice what it does not have to.
The output goes to a fresh temporary file beside OUT first (never the input, never a
file of the user's) and is renamed at the end: an interrupted run leaves no
half-written model behind.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...errors import TinyLLMError
from ...gguf_file import GGUFFile
from . import mixes, quantize_rows

QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION: the block layouts of ggml's formats
CHUNK_VALUES = 1 << 22            # ~4M values (16 MiB as float32) quantized per call

# report groups, in print order; the first whose key is in the name wins
GROUPS = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output",
          "ffn_gate", "ffn_up", "ffn_down", "norms", "other")


def group_of(name: str, ne) -> str:
    if len(ne) < 2 or all(n == 1 for n in ne[1:]):
        return "norms"                                   # 1-D: norms, biases, rope_freqs
    cat = mixes.category(name)
    return cat if cat in GROUPS else "other"


# ---- the report -------------------------------------------------------------------------------
@dataclass
class TensorPlan:
    name: str
    ne: tuple                # ggml order: ne[0] values per row
    src_type: str
    dst_type: str
    n_params: int
    nbytes: int              # size in dst_type


@dataclass
class GroupStats:
    n_params: int = 0
    nbytes: int = 0
    types: Counter = field(default_factory=Counter)

    @property
    def bpw(self) -> float:
        return 8.0 * self.nbytes / self.n_params if self.n_params else 0.0


@dataclass
class QuantizeReport:
    src_path: str
    dst_path: str | None     # None for a dry run
    target: str
    file_type: int
    tensors: list            # [TensorPlan] in file order
    src_bytes: int           # tensor data size of the input
    file_size: int = 0       # bytes written (0 for a dry run)
    seconds: float = 0.0

    @property
    def groups(self) -> dict:
        g = {}
        for t in self.tensors:
            s = g.setdefault(group_of(t.name, t.ne), GroupStats())
            s.n_params += t.n_params
            s.nbytes += t.nbytes
            s.types[t.dst_type] += 1
        return {k: g[k] for k in GROUPS if k in g}

    @property
    def requantized(self) -> list:
        """Source types that get quantized again (their rounding error stays in)."""
        return sorted({t.src_type for t in self.tensors
                       if t.src_type != t.dst_type and t.src_type not in mixes.FLOAT_TYPES})

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bpw(self) -> float:
        """Bits per weight over every tensor (norms included), as llama.cpp prints it."""
        return 8.0 * self.nbytes / self.n_params if self.n_params else 0.0

    def table(self) -> str:
        """One line per tensor group: tensors, parameters, size, bits per weight, types."""
        rows = [f"{'group':<12} {'tensors':>7} {'params':>12} {'MiB':>9} {'bpw':>6}  types"]
        for name, s in self.groups.items():
            types = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(s.types.items()))
            rows.append(f"{name:<12} {sum(s.types.values()):>7} {s.n_params:>12,} "
                        f"{s.nbytes / 2**20:>9.2f} {s.bpw:>6.2f}  {types}")
        rows.append(f"{'total':<12} {len(self.tensors):>7} {self.n_params:>12,} "
                    f"{self.nbytes / 2**20:>9.2f} {self.bpw:>6.2f}  {self.target} "
                    f"(file_type {self.file_type}; input {self.src_bytes / 2**20:.2f} MiB)")
        return "\n".join(rows)


# ---- sizes and the block quantizers -------------------------------------------------------------
def type_size(type_name: str) -> tuple[int, int]:
    """(values per block, bytes per block)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


def row_bytes(type_name: str, n_cols: int) -> int:
    block, size = type_size(type_name)
    return n_cols // block * size


def float_rows(gguf: GGUFFile, name: str, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of a tensor as float32 (n, ne[0]): a view for F32, else dequantized."""
    t = gguf.tensors[name]
    raw = gguf.raw(name)[r0:r1]
    if t.type_name == "F32":
        return raw.view(np.float32)
    from ...quant import dequantize
    return dequantize(raw, t.ggml_type)


# ---- metadata with its value types ------------------------------------------------------------
# GGUFFile.metadata holds the values; writing them back needs each one's GGUF type
# (u32 vs i32, f32 vs f64, array element types), so walk the KV section once more.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_kv(gguf: GGUFFile) -> list:
    """[(key, value, value type, array element type or None)] in file order.
    Strings stay bytes (copied exactly, whatever their encoding); arrays are lists."""
    buf = gguf._map                       # the file's read-only map (GGUFFile keeps it open)

    def string(pos):
        (n,) = struct.unpack_from("<Q", buf, pos)
        return bytes(buf[pos + 8:pos + 8 + n]), pos + 8 + n

    def value(vtype, pos):
        if vtype in _FIXED:
            fmt = "<" + _FIXED[vtype]
            return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
        if vtype == _STRING:
            return string(pos)
        raise ValueError(f"unexpected value type {vtype}")

    (n_kv,) = struct.unpack_from("<Q", buf, 16)
    pos, out = 24, []
    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype != _ARRAY:
            v, pos = value(vtype, pos)
            out.append((key.decode(), v, vtype, None))
            continue
        etype, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _FIXED:               # numeric array: one unpack for all of it
            fmt = f"<{n}{_FIXED[etype]}"
            items = list(struct.unpack_from(fmt, buf, pos))
            pos += struct.calcsize(fmt)
        else:
            items = [None] * n
            for j in range(n):
                items[j], pos = value(etype, pos)
        out.append((key.decode(), items, vtype, etype))
    return out


def copy_metadata(writer, gguf: GGUFFile, file_type: int) -> None:
    """Every key/value of the input, with general.file_type / quantization_version updated."""
    from gguf import GGUFValueType
    new = {"general.file_type": file_type, "general.quantization_version": QUANTIZATION_VERSION}
    for key, val, vtype, etype in read_kv(gguf):
        if key == "general.architecture":
            continue                      # GGUFWriter(path, arch) wrote it already
        if key in new:
            val, vtype, etype = new.pop(key), GGUFValueType.UINT32, None
        if key == "general.alignment":
            writer.data_alignment = int(val)
        writer.add_key_value(key, val, GGUFValueType(vtype), GGUFValueType(etype) if etype is not None else None)
    for key, val in new.items():          # keys the input did not have
        writer.add_uint32(key, val)


# ---- the pipeline ------------------------------------------------------------------------------
def plan(gguf: GGUFFile, target: str) -> list:
    """[TensorPlan] for every tensor, in file order."""
    types = mixes.choose_types_for_file(gguf, target)
    out = []
    for t in gguf.tensors.values():
        n_rows = t.n_elements // t.ne[0]
        dst = types[t.name]
        out.append(TensorPlan(t.name, t.ne, t.type_name, dst, t.n_elements, n_rows * row_bytes(dst, t.ne[0])))
    return out


def check_target(target: str) -> str:
    t = str(target).upper()
    if t not in mixes.TARGETS:
        raise TinyLLMError(f"unknown quantization type {target!r} (choose from {', '.join(mixes.TARGETS)})")
    return t


def write_tensor(f, gguf: GGUFFile, p: TensorPlan) -> None:
    """Append one tensor's data in its new type, CHUNK_VALUES values at a time."""
    raw = gguf.raw(p.name)                # (n_rows, bytes per row), a view of the map
    n_cols = p.ne[0]
    step = max(1, CHUNK_VALUES // n_cols)
    for r0 in range(0, raw.shape[0], step):
        src = raw[r0:r0 + step]
        if p.dst_type == p.src_type:
            f.write(memoryview(np.ascontiguousarray(src)).cast("B"))
        else:
            x = float_rows(gguf, p.name, r0, r0 + step)                # (n, n_cols) float32
            q = quantize_rows(np.ascontiguousarray(x, np.float32), p.dst_type)
            f.write(memoryview(np.ascontiguousarray(q)).cast("B"))
        release(gguf, src)


def release(gguf: GGUFFile, view: np.ndarray) -> None:
    """Drop the pages under `view` (a slice of the source map) from our address space
    once they are written.  They are clean file pages the OS can read again, but
    while mapped they count in RSS: without this, quantizing Gemma 3's 671 MB F32
    token_embd would "use" 671 MB."""
    if not hasattr(mmap, "MADV_DONTNEED") or view.nbytes == 0:
        return
    start = view.__array_interface__["data"][0] - gguf._bytes.__array_interface__["data"][0]
    page0 = start - start % mmap.PAGESIZE
    gguf._map.madvise(mmap.MADV_DONTNEED, page0, start + view.nbytes - page0)


def pad(f, alignment: int) -> None:
    f.write(b"\0" * (-f.tell() % alignment))


def quantize_model(src_path, dst_path, target: str, progress=None, dry_run: bool = False,
                   overwrite: bool = True) -> QuantizeReport:
    """Quantize the GGUF at src_path to `target` (see mixes.TARGETS), write dst_path.

    progress(i, n, name, dst_type, elapsed_seconds) is called before each tensor.
    overwrite=False refuses to replace an existing dst_path (`tinyllm quantize` without
    --force); the input itself is never replaced, whatever the path or link leading to it."""
    target = check_target(target)
    src_path = str(src_path)
    gguf = GGUFFile(src_path)             # TinyLLMError for a missing / non-GGUF file
    t_start = time.time()
    try:
        tensors = plan(gguf, target)
        report = QuantizeReport(src_path, None if dry_run else str(dst_path), target,
                                mixes.file_type(target), tensors,
                                sum(t.n_bytes for t in gguf.tensors.values()))
        if dry_run:
            return report
        dst_path = str(dst_path)
        check_output_path(src_path, dst_path, overwrite)
        write_atomically(dst_path, overwrite, lambda tmp: write_file(gguf, tensors, tmp, target,
                                                                     progress, t_start))
        report.file_size = os.path.getsize(dst_path)
        report.seconds = time.time() - t_start
        return report
    finally:
        gguf.close()


def check_output_path(src_path: str, dst_path: str, overwrite: bool) -> None:
    """Refuse an output that is the input (same inode: a hard link or a symlink counts),
    a directory, a missing directory, or (without overwrite) an existing file."""
    out_dir = os.path.dirname(os.path.abspath(dst_path))
    if not os.path.isdir(out_dir):
        raise TinyLLMError(f"output directory does not exist: {out_dir}")
    if os.path.isdir(dst_path):
        raise TinyLLMError(f"{dst_path} is a directory; give the output file's path")
    if os.path.exists(dst_path):
        if os.path.samefile(src_path, dst_path):
            raise TinyLLMError(f"refusing to overwrite the input file {src_path}")
        if not overwrite:
            raise TinyLLMError(f"{dst_path} already exists; pass --force to replace it")


def write_atomically(dst_path: str, overwrite: bool, write) -> None:
    """write(tmp) into a fresh temporary file beside dst_path, then move it into place.

    The temporary name is unique (mkstemp creates it exclusively), so it can be neither
    the input nor a file of the user's; an error, Ctrl-C or SIGTERM removes it, so an
    interrupted run leaves nothing half-written behind.  Without overwrite the move is a
    hard link, which fails if dst_path appeared in the meantime instead of replacing it."""
    import signal
    import tempfile
    out_dir = os.path.dirname(os.path.abspath(dst_path))
    try:
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix="." + os.path.basename(dst_path) + ".",
                                   suffix=".tmp")
    except OSError as e:
        raise TinyLLMError(f"cannot write in {out_dir}: {e.strerror or e}") from None
    os.close(fd)

    def on_sigterm(signum, frame):        # becomes an exception, so the finally below runs
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:                    # not the main thread: no handler, no change
        old = None
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, dst_path)
        else:
            try:
                os.link(tmp, dst_path)    # no-clobber: EEXIST if dst_path exists
            except FileExistsError:
                raise TinyLLMError(f"{dst_path} already exists; pass --force to replace it") from None
            except OSError:               # a file system without hard links (FAT)
                if os.path.exists(dst_path):
                    raise TinyLLMError(f"{dst_path} already exists; pass --force to replace it") from None
                os.replace(tmp, dst_path)
    except OSError as e:                  # permissions, a full disk, a read-only or odd place
        raise TinyLLMError(f"cannot write {dst_path}: {e.strerror or e}") from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_file(gguf: GGUFFile, tensors: list, path: str, target: str, progress, t_start: float) -> None:
    import gguf as gguf_py
    arch = str(gguf.get("general.architecture", "llama"))
    w = gguf_py.GGUFWriter(path, arch)
    copy_metadata(w, gguf, mixes.file_type(target))
    for p in tensors:
        # declared as bytes (n_rows, row_bytes) of type dst: GGUFWriter turns that
        # back into the element shape and computes each tensor's offset
        n_rows = p.n_params // p.ne[0]
        byte_shape = tuple(reversed(p.ne[1:])) + (row_bytes(p.dst_type, p.ne[0]),)
        w.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), p.nbytes,
                          raw_dtype=gguf_py.GGMLQuantizationType[p.dst_type])
        assert n_rows * byte_shape[-1] == p.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    alignment = w.data_alignment
    w.close()
    with open(path, "ab") as f:
        pad(f, alignment)                 # the data section starts aligned
        for i, p in enumerate(tensors):
            if progress:
                progress(i, len(tensors), p.name, p.dst_type, time.time() - t_start)
            write_tensor(f, gguf, p)
            pad(f, alignment)
        if progress:
            progress(len(tensors), len(tensors), "", "", time.time() - t_start)
