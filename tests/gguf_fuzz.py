"""A seeded mutator of GGUF headers, for tests/test_gguf_fuzz.py (and longer runs by hand).

The seeds are the headers of the real models in models/ and of the synthetic
Qwen2.5-7B header (scripts/make_synthetic_header.py).  Each seed is first mapped:
a small walker, independent of tinyllm's parser, records where every count, length,
value type, alignment, tensor dimension, ggml type and offset sits in the bytes.
A mutation then aims at one of those fields (or truncates, or flips bits), writes the
mutated header to a file and extends it with a hole to the size the tensors need
(a sparse file: no data blocks), so a clean load is possible.

Each case must end in TinyLLMError or a clean load, within 2 s of CPU time and
200 MiB of peak RSS.  Anything else is a defect; `python tests/gguf_fuzz.py --save`
keeps such cases as header-only regression files in tests/fixtures/hostile_gguf/.

    python tests/gguf_fuzz.py --cases 50000 --seed 7        # a longer run by hand
"""

from __future__ import annotations

import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "fixtures" / "hostile_gguf"
CPU_LIMIT, RSS_LIMIT = 2.0, 200 * 2**20     # per case
KEEP = 64               # the big arrays (vocabulary, merges, scores) are cut to this many entries

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
          20: (32, 18), 30: (1, 2)}


@dataclass
class Seed:
    """A header and where its fields are: lists of (byte offset, struct format)."""
    name: str
    header: bytes                       # up to the end of the tensor infos
    data_size: int                      # bytes of tensor data after the aligned header
    alignment: int
    counts: list = field(default_factory=list)      # n_tensors, n_kv, array counts, string lengths
    vtypes: list = field(default_factory=list)      # metadata value types, array element types
    values: list = field(default_factory=list)      # scalar metadata values
    align_value: tuple | None = None                # general.alignment's value
    n_dims: list = field(default_factory=list)
    dims: list = field(default_factory=list)
    ggml_types: list = field(default_factory=list)
    offsets: list = field(default_factory=list)

    @property
    def file_size(self) -> int:
        return -(-len(self.header) // self.alignment) * self.alignment + self.data_size


def _string(buf, pos):
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8:pos + 8 + n]), pos + 8 + n


def _skip_value(buf, vtype, pos):
    if vtype in _SIZES:
        return pos + _SIZES[vtype]
    if vtype == _STRING:
        return _string(buf, pos)[1]
    etype, n = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    for _ in range(n):
        pos = _skip_value(buf, etype, pos)
    return pos


def shrink(buf: bytes, keep: int = KEEP, add_alignment: bool = True) -> bytes:
    """The header of `buf` with every array cut to `keep` entries (and a general.alignment
    entry added if there is none): the same structure, a few KiB instead of MiB."""
    _, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    out, pos, has_alignment = [], 24, False
    for _ in range(n_kv):
        key, p = _string(buf, pos)
        has_alignment |= key == b"general.alignment"
        (vtype,) = struct.unpack_from("<I", buf, p)
        if vtype == _ARRAY:
            etype, n = struct.unpack_from("<IQ", buf, p + 4)
            q = p + 16
            for _ in range(min(n, keep)):
                q = _skip_value(buf, etype, q)
            out.append(buf[pos:p + 4] + struct.pack("<IQ", etype, min(n, keep)) + buf[p + 16:q])
            pos = _skip_value(buf, vtype, p + 4)
        else:
            end = _skip_value(buf, vtype, p + 4)
            out.append(buf[pos:end])
            pos = end
    if add_alignment and not has_alignment:
        key = b"general.alignment"
        out.append(struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, 32))
        n_kv += 1
    infos_start = pos
    for _ in range(n_tensors):
        _, p = _string(buf, pos)
        (nd,) = struct.unpack_from("<I", buf, p)
        pos = p + 4 + 8 * nd + 12
    return (struct.pack("<4sIQQ", b"GGUF", version, n_tensors, n_kv) + b"".join(out)
            + bytes(buf[infos_start:pos]))


def map_seed(name: str, header: bytes) -> Seed:
    """Walk a well-formed header and note where each mutable field is."""
    _, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", header, 0)
    s = Seed(name, header, 0, 32)
    s.counts += [(8, "<Q"), (16, "<Q")]
    pos = 24

    def walk_value(vtype, pos, key):
        if vtype in _SIZES:
            s.values.append((pos, _FORMATS[vtype]))
            if key == b"general.alignment":
                s.align_value = (pos, _FORMATS[vtype])
                s.alignment = struct.unpack_from(_FORMATS[vtype], header, pos)[0]
            return pos + _SIZES[vtype]
        if vtype == _STRING:
            s.counts.append((pos, "<Q"))
            return _string(header, pos)[1]
        etype, n = struct.unpack_from("<IQ", header, pos)
        s.vtypes.append((pos, "<I"))
        s.counts.append((pos + 4, "<Q"))
        pos += 12
        for _ in range(n):
            pos = walk_value(etype, pos, None) if etype in (_STRING, _ARRAY) else pos + _SIZES[etype]
        return pos

    for _ in range(n_kv):
        s.counts.append((pos, "<Q"))
        key, pos = _string(header, pos)
        s.vtypes.append((pos, "<I"))
        (vtype,) = struct.unpack_from("<I", header, pos)
        pos = walk_value(vtype, pos + 4, key)
    end = 0
    for _ in range(n_tensors):
        s.counts.append((pos, "<Q"))
        _, pos = _string(header, pos)
        s.n_dims.append((pos, "<I"))
        (nd,) = struct.unpack_from("<I", header, pos)
        ne = struct.unpack_from(f"<{nd}Q", header, pos + 4)
        s.dims += [(pos + 4 + 8 * i, "<Q") for i in range(nd)]
        ggml_type, offset = struct.unpack_from("<IQ", header, pos + 4 + 8 * nd)
        s.ggml_types.append((pos + 4 + 8 * nd, "<I"))
        s.offsets.append((pos + 8 + 8 * nd, "<Q"))
        n_el = 1
        for d in ne:
            n_el *= d
        block, size = _BLOCK[ggml_type]
        end = max(end, offset + n_el // block * size)
        pos += 4 + 8 * nd + 12
    assert pos == len(header), (name, pos, len(header))
    s.data_size = end
    return s


def header_of(path) -> bytes:
    """The bytes of a GGUF file up to the end of its tensor infos."""
    with open(path, "rb") as f:
        buf = f.read(1 << 24)       # the real headers are 1.8 and 6.5 MB
    _, _, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    pos = 24
    for _ in range(n_kv):
        _, pos = _string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos = _skip_value(buf, vtype, pos + 4)
    for _ in range(n_tensors):
        _, p = _string(buf, pos)
        (nd,) = struct.unpack_from("<I", buf, p)
        pos = p + 4 + 8 * nd + 12
    return buf[:pos]


def with_string(src, dst, key: str, value: str) -> None:
    """Copy the GGUF at src to dst with the string metadata `key` set to `value` (added if
    missing); the tensor data is copied after the header, re-padded to the alignment."""
    with open(src, "rb") as f:
        buf = f.read()
    header = header_of(src)
    _, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", header, 0)
    pos, kvs, align = 24, [], 32
    for _ in range(n_kv):
        k, p = _string(header, pos)
        (vtype,) = struct.unpack_from("<I", header, p)
        end = _skip_value(header, vtype, p + 4)
        if k == b"general.alignment":
            align = struct.unpack_from("<I", header, p + 4)[0]
        if k != key.encode():
            kvs.append(header[pos:end])
        pos = end
    enc = value.encode()
    kvs.append(struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IQ", 8, len(enc)) + enc)
    new = struct.pack("<4sIQQ", b"GGUF", version, n_tensors, len(kvs)) + b"".join(kvs) + header[pos:]
    data_start = -(-len(header) // align) * align
    with open(dst, "wb") as f:
        f.write(new + b"\0" * (-len(new) % align))
        f.write(buf[data_start:])


def synthetic_header(tmp_dir) -> bytes:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from make_synthetic_header import write_qwen25_7b_q4_k_m
    finally:
        sys.path.pop(0)
    path = Path(tmp_dir) / "qwen2.5-7b.synthetic.gguf"
    write_qwen25_7b_q4_k_m(path)
    try:
        return header_of(path)
    finally:
        path.unlink()


def seeds(tmp_dir) -> list:
    """Full and shrunk headers of SmolLM2, Gemma 3 and the synthetic Qwen2.5-7B."""
    out = []
    for name, path in (("smollm2", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       ("gemma3", ROOT / "models" / "gemma-3-270m-q4_k_m.gguf")):
        full = header_of(path)
        out.append(map_seed(name, full))
        out.append(map_seed(name + "-small", shrink(full)))
    out.append(map_seed("qwen2.5-7b-small", shrink(synthetic_header(tmp_dir))))
    return out


# ---- mutations --------------------------------------------------------------------------

ABSURD = [0, 1, 2, 3, 7, 31, 33, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1,
          2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]


def _put(buf: bytearray, at, value) -> None:
    pos, fmt = at
    size = struct.calcsize(fmt)
    bits = size * 8
    if fmt[-1] in "fd":
        struct.pack_into(fmt, buf, pos, float(value))
    elif fmt[-1] == "?":
        buf[pos] = value & 0xFF
    else:
        struct.pack_into("<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[size], buf, pos, value % (1 << bits))


def _number(rng, original=None):
    pick = rng.random()
    if original is not None and pick < 0.3:
        return max(0, original + rng.choice([-2, -1, 1, 2, 32, -32]))
    if pick < 0.8:
        return rng.choice(ABSURD)
    return rng.getrandbits(rng.choice([8, 16, 32, 64]))


def _value_at(header, at):
    return struct.unpack_from(at[1], header, at[0])[0]


KINDS = ("truncate", "bitflip", "count", "vtype", "value", "alignment", "offset", "dims",
         "n_dims", "ggml_type", "splice")


def mutate(seed: Seed, rng: random.Random) -> tuple[str, bytes, int]:
    """(kind, header bytes, file size) of one mutant of `seed`."""
    buf = bytearray(seed.header)
    size = seed.file_size
    kind = rng.choice(KINDS)
    if kind == "truncate":
        cut = rng.randrange(0, len(buf) + (64 if rng.random() < 0.8 else seed.data_size))
        if cut < len(buf):
            return kind, bytes(buf[:cut]), cut
        return kind, bytes(buf), min(cut, size - 1)
    if kind == "bitflip":
        for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "splice":             # a run of random bytes somewhere in the header
        i = rng.randrange(len(buf))
        n = rng.choice([1, 4, 8, 16, 64])
        buf[i:i + n] = bytes(rng.getrandbits(8) for _ in range(n))
        buf = buf[:len(seed.header)]
    else:
        field_ = {"count": seed.counts, "vtype": seed.vtypes, "value": seed.values,
                  "offset": seed.offsets, "dims": seed.dims, "n_dims": seed.n_dims,
                  "ggml_type": seed.ggml_types,
                  "alignment": [seed.align_value] if seed.align_value else seed.values}[kind]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            at = rng.choice(field_)
            orig = _value_at(buf, at)
            if kind == "vtype":
                value = rng.choice([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 255, 2**32 - 1])
            elif kind == "ggml_type":
                value = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 12, 14, 19, 30, 39, 40, 1000, 2**32 - 1])
            elif kind == "n_dims":
                value = rng.choice([0, 1, 2, 3, 4, 5, 8, 2**31, 2**32 - 1])
            elif kind == "offset":
                # unaligned, shifted by an alignment (overlap), past the end, wrapped
                value = rng.choice([orig + 1, orig + 16, max(0, orig - seed.alignment),
                                    orig + seed.alignment, 0, size, seed.data_size, 2**63, 2**64 - 1,
                                    _number(rng, orig)])
            elif kind == "alignment":
                value = rng.choice([0, 1, 2, 3, 6, 12, 48, 64, 100, 2**31, 2**32 - 1, _number(rng)])
            elif kind == "value" and at[1][-1] in "fd":
                value = rng.choice([0.0, -1.0, 1e30, -1e30, float("inf"), float("nan"), 1e-30])
            else:
                value = _number(rng, orig if isinstance(orig, int) else None)
            _put(buf, at, value)
    return kind, bytes(buf), max(size, len(buf))


def write_case(path, header: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(header[:size])
    if size > len(header):
        os.truncate(path, size)          # the tensor data: a hole, no blocks on disk


# ---- running a case ---------------------------------------------------------------------

def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                 # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def load(path) -> str:
    """What `tinyllm` does with a header before touching weights: parse, read the
    model's dimensions (the config and the memory plan's shape).  'ok' or 'error'."""
    from tinyllm.errors import TinyLLMError
    from tinyllm.gguf_file import GGUFFile
    from tinyllm.memory import model_shape
    from tinyllm.model import Config
    try:
        g = GGUFFile(path)
    except TinyLLMError:
        return "error"
    try:
        Config.from_gguf(g)
        model_shape(g)
    except TinyLLMError:
        return "error"
    finally:
        g.close()
    return "ok"


@dataclass
class Outcome:
    kind: str
    result: str                         # ok, error, or the exception's one-line repr
    cpu_s: float
    peak_rss: int                       # bytes above the RSS when the case started
    header: bytes
    size: int


class LimitExceeded(Exception):
    pass


class _Watch:
    """A SIGALRM every 10 ms while a case runs: past the CPU or RSS limit, the case is
    stopped by an exception (so a hang or a runaway allocation is reported, not suffered)."""

    def __init__(self, cpu_limit: float, rss_limit: int):
        import signal
        self.signal, self.cpu_limit, self.rss_limit = signal, cpu_limit, rss_limit
        self.page = os.sysconf("SC_PAGE_SIZE")
        signal.signal(signal.SIGALRM, self._check)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    active = False

    def _check(self, *_):
        if not self.active:
            return
        over = (f"over {self.cpu_limit} s of CPU time" if time.process_time() - self.t0 > self.cpu_limit
                else f"over {self.rss_limit / 2**20:.0f} MiB of RSS" if self._rss() - self.rss0 > self.rss_limit
                else None)
        if over:
            self.stop()                  # one exception per case
            raise LimitExceeded(over)

    def start(self):
        self.t0, self.rss0 = time.process_time(), self._rss()
        self.active = True
        self.signal.setitimer(self.signal.ITIMER_REAL, 0.01, 0.01)

    def stop(self):
        self.active = False
        self.signal.setitimer(self.signal.ITIMER_REAL, 0)


def run_case(path, kind, header, size, watch: _Watch | None = None) -> Outcome:
    write_case(path, header, size)
    measure = _reset_peak_rss()
    rss0 = _peak_rss() if measure else 0
    t0 = time.process_time()
    try:
        if watch:
            watch.start()
        try:
            result = load(path)
        finally:
            if watch:
                watch.stop()
    except Exception as e:               # a defect: anything but TinyLLMError
        import traceback
        where = traceback.extract_tb(e.__traceback__)[-1]
        result = (f"{type(e).__name__}: {str(e)[:200]} "
                  f"[{Path(where.filename).name}:{where.lineno} {where.name}]")
    cpu = time.process_time() - t0
    peak = _peak_rss() - rss0 if measure else 0
    return Outcome(kind, result, cpu, peak, header, size)


def fuzz(n_cases: int, seed: int, tmp_dir, on_case=None) -> list:
    rng = random.Random(seed)
    all_seeds = seeds(tmp_dir)
    path = Path(tmp_dir) / "case.gguf"
    watch = _Watch(CPU_LIMIT, RSS_LIMIT)
    out = []
    for i in range(n_cases):
        # the small seeds carry the same structure at a fraction of the parse cost
        s = rng.choice(all_seeds) if rng.random() < 0.05 else rng.choice(
            [s for s in all_seeds if s.name.endswith("-small")])
        kind, header, size = mutate(s, rng)
        o = run_case(path, kind, header, size, watch)
        o.kind = f"{s.name}:{kind}"
        out.append(o)
        if on_case:
            on_case(i, o)
    return out


def bad(o: Outcome, cpu_limit=CPU_LIMIT, rss_limit=RSS_LIMIT) -> bool:
    return o.result not in ("ok", "error") or o.cpu_s > cpu_limit or o.peak_rss > rss_limit


def save_regression(o: Outcome, name: str) -> Path:
    """A failing case as a header-only file (the hole is not stored): the test extends it again."""
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    p = REGRESSIONS / f"{name}.gguf-header"
    p.write_bytes(o.header[:o.size])
    (REGRESSIONS / f"{name}.size").write_text(f"{o.size}\n")
    return p


def seeds_load(tmp_dir) -> bool:
    """The unmutated seeds load cleanly (else the mutants prove little)."""
    path = Path(tmp_dir) / "seed.gguf"
    return all(run_case(path, "seed", s.header, s.file_size).result == "ok" for s in seeds(tmp_dir))


def main(argv=None):
    import argparse
    import json
    import tempfile
    from collections import Counter
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", action="store_true", help="keep failing cases in tests/fixtures/hostile_gguf/")
    ap.add_argument("--json", default=None, help="write a summary here (for the test)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        res = fuzz(a.cases, a.seed, tmp)
        wall = time.time() - t0
        seeds_ok = seeds_load(tmp)
    tally = Counter((o.kind.split(":")[1], "DEFECT" if bad(o) else o.result) for o in res)
    for k in KINDS:
        print(f"{k:<10} ok {tally[(k, 'ok')]:>6}  error {tally[(k, 'error')]:>6}  defect {tally[(k, 'DEFECT')]:>4}")
    worst = max(res, key=lambda o: o.cpu_s)
    print(f"{len(res)} cases in {wall:.0f} s; slowest {worst.cpu_s:.3f} s CPU ({worst.kind}); "
          f"largest peak RSS {max(o.peak_rss for o in res) / 2**20:.1f} MiB; seeds load: {seeds_ok}")
    defects = [(i, o) for i, o in enumerate(res) if bad(o)]
    print("defects:", dict(Counter(o.result.split(" [")[0] for _, o in defects)) or "none")
    seen = set()
    for i, o in defects:
        print(f"  case {i} {o.kind}: {o.result} ({o.cpu_s:.2f} s, {o.peak_rss / 2**20:.0f} MiB)")
        sig = (o.kind.split(":")[1], o.result.split(":")[0], o.result.split(" [")[-1])
        # keep one small file per kind of failure (the shrunk seeds' headers are a few KiB)
        if a.save and sig not in seen and len(o.header) < 64 * 1024:
            seen.add(sig)
            print("   saved", save_regression(o, f"seed{a.seed}-case{i}"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cases": len(res), "seeds_load": seeds_ok,
                       "ok": sum(o.result == "ok" for o in res),
                       "error": sum(o.result == "error" for o in res),
                       "by_kind": sorted({o.kind.split(":")[1] for o in res}),
                       "max_cpu_s": max(o.cpu_s for o in res),
                       "max_peak_rss": max(o.peak_rss for o in res),
                       "defects": [f"case {i} {o.kind}: {o.result}" for i, o in defects]}, f)


if __name__ == "__main__":
    main()
