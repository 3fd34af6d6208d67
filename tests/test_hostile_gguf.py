"""Hostile GGUF headers: each ends in one TinyLLMError line, quickly, without a large allocation.

The hand-written cases are the defects of issue #15; the fuzz test mutates the real
headers (tests/gguf_fuzz.py) and keeps what once crashed in tests/fixtures/hostile_gguf/.
"""

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gguf_fuzz
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile

ROOT = Path(__file__).resolve().parent.parent


# ---- a raw header writer: every byte under the test's control ---------------------------

def s(text) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return s(key) + struct.pack("<II", 4, v)


def header(kvs=(), tensors=(), n_kv=None, n_tensors=None) -> bytes:
    """GGUF v3: kvs are encoded key/value byte strings, tensors (name, ne, ggml type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv) + b"".join(kvs)
    for name, ne, t, off in tensors:
        out += s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t, off)
    return out


def write(tmp_path, data: bytes, size=None, name="h.gguf") -> Path:
    p = tmp_path / name
    gguf_fuzz.write_case(p, data, size or len(data))
    return p


def refused(path, *needles):
    t0 = time.process_time()
    with pytest.raises(TinyLLMError) as e:
        GGUFFile(path)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n.lower() in msg.lower(), (n, msg)
    assert time.process_time() - t0 < 2.0
    return msg


def padded(h: bytes, data: int, align=32) -> int:
    return -(-len(h) // align) * align + data


F32 = 0


# ---- the defects of issue #15 ---------------------------------------------------------------

@pytest.mark.parametrize("value,needle", [
    (struct.pack("<II", 4, 0), "power of two"),                 # was ZeroDivisionError
    (struct.pack("<II", 4, 48), "power of two"),
    (struct.pack("<If", 6, 32.0), "power of two"),              # a float: was ZeroDivisionError / accepted
    (struct.pack("<IIQ", 9, 4, 1) + struct.pack("<I", 32), "power of two"),   # an array: was TypeError
    (struct.pack("<I?", 7, True), "power of two"),
])
def test_alignment_must_be_a_positive_power_of_two(tmp_path, value, needle):
    h = header([s("general.alignment") + value], [("w", (32,), F32, 0)])
    refused(write(tmp_path, h, padded(h, 128, 64)), needle)


def test_string_array_count_beyond_the_file_is_refused_before_allocating(tmp_path):
    # 2^32 strings claimed in a 100-byte file: was MemoryError from [None] * n
    h = header([s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2**32) + s("a")])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(write(tmp_path, h), "claims 4,294,967,296 entries")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024   # KiB


@pytest.mark.parametrize("n_kv,n_tensors", [(2**63, 0), (0, 2**40), (10**7, 0)])
def test_counts_are_checked_against_the_file_size(tmp_path, n_kv, n_tensors):
    # a 96 MB file of zeros after the counts: was > 60 s and 1.5 GB to reject
    h = header(n_kv=n_kv, n_tensors=n_tensors)
    refused(write(tmp_path, h, 96 * 10**6), "claims")


def test_header_size_is_bounded(tmp_path):
    # 12M empty strings fit in 96 MB, but no real header is that large
    h = header([s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 12 * 10**6)])
    refused(write(tmp_path, h, 96 * 10**6 + len(h)), "of the 32 MiB a header may take")


def test_arrays_of_arrays_are_refused(tmp_path):
    # each inner array is a Python object per 12 header bytes: llama.cpp refuses them too
    h = header([s("x") + struct.pack("<IIQ", 9, 9, 2) + struct.pack("<IQ", 4, 0) * 2])
    refused(write(tmp_path, h), "array of type 9")


def test_duplicate_tensor_names(tmp_path):
    h = header([], [("w", (32,), F32, 0), ("w", (32,), F32, 128)])
    refused(write(tmp_path, h, padded(h, 256)), "'w' appears twice")


def test_duplicate_metadata_keys(tmp_path):
    h = header([kv_u32("a", 1), kv_u32("a", 2)])
    refused(write(tmp_path, h), "'a' appears twice")


def test_misaligned_offset(tmp_path):
    h = header([], [("w", (32,), F32, 4)])
    refused(write(tmp_path, h, padded(h, 256)), "not a multiple of the alignment")


def test_overlapping_tensors(tmp_path):
    h = header([], [("a", (64,), F32, 0), ("b", (32,), F32, 128)])   # a is 256 bytes
    refused(write(tmp_path, h, padded(h, 512)), "overlap")


@pytest.mark.parametrize("ne,needle", [
    ((2**32, 2**32, 2**32, 2**32), "truncated"),    # the product overflows int64: was accepted
    ((32, 0), "zero dimension"),
    ((2**63, 2), "truncated"),
])
def test_dims_must_be_positive_and_fit_the_file(tmp_path, ne, needle):
    h = header([], [("w", ne, F32, 0)])
    refused(write(tmp_path, h, padded(h, 4096)), needle)


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_number_of_dimensions(tmp_path, n_dims):
    h = header() + s("w") + struct.pack("<I", n_dims) + b"\0" * 64
    h = h[:16] + struct.pack("<Q", 0) + h[24:]            # n_kv = 0
    h = h[:8] + struct.pack("<Q", 1) + h[16:]             # one tensor
    refused(write(tmp_path, h), "dimensions")


@pytest.mark.parametrize("key,value,needle", [
    ("llama.attention.head_count", struct.pack("<II", 4, 0), "out of range"),          # was ZeroDivisionError
    ("llama.attention.head_count", struct.pack("<I", 8) + s("32"), "must be an integer"),
    ("llama.block_count", struct.pack("<IQ", 10, 2**62), "out of range"),               # was a runaway loop
    ("llama.rope.freq_base", struct.pack("<I", 8) + s("fast"), "finite number"),
    ("llama.attention.layer_norm_rms_epsilon", struct.pack("<If", 6, float("nan")), "finite number"),
])
def test_hyperparameters_of_the_wrong_type_or_range(tmp_path, smollm2_path, key, value, needle):
    """A real header with one hyperparameter replaced: Config and the memory plan refuse it."""
    from tinyllm.memory import model_shape
    from tinyllm.model import Config
    seed = gguf_fuzz.map_seed("smollm2", gguf_fuzz.shrink(gguf_fuzz.header_of(smollm2_path)))
    g0 = write(tmp_path, seed.header, seed.file_size, "seed.gguf")
    Config.from_gguf(GGUFFile(g0))                       # the unmutated seed loads
    # append the replacement as an extra key; drop the original by renaming it
    infos = _tensor_infos_start(seed.header)
    h = bytearray(seed.header)
    i = h.find(s(key))
    assert i > 0
    h[i + 8] ^= 0x20                                     # 'l' -> 'L': the old key no longer counts
    n_kv = struct.unpack_from("<Q", h, 16)[0]
    struct.pack_into("<Q", h, 16, n_kv + 1)
    h = bytes(h[:infos]) + s(key) + value + bytes(h[infos:])
    g = GGUFFile(write(tmp_path, h, padded(h, seed.data_size)))
    # the memory plan reads the dimensions only, not the float hyperparameters
    for build in (Config.from_gguf, model_shape) if "integer" in needle or "range" in needle \
            else (Config.from_gguf,):
        with pytest.raises(TinyLLMError, match=needle):
            build(g)


def _tensor_infos_start(h: bytes) -> int:
    _, _, n_tensors, n_kv = struct.unpack_from("<4sIQQ", h, 0)
    pos = 24
    for _ in range(n_kv):
        _, pos = gguf_fuzz._string(h, pos)
        (vtype,) = struct.unpack_from("<I", h, pos)
        pos = gguf_fuzz._skip_value(h, vtype, pos + 4)
    return pos


def test_failed_mmap_is_one_line(tmp_path, smollm2_path):
    """Under `ulimit -v` smaller than the model, mapping it fails: one line, exit 2."""
    code = ("import resource, sys\n"
            "from tinyllm.cli import main\n"
            "resource.setrlimit(resource.RLIMIT_AS, (400 * 2**20, resource.RLIM_INFINITY))\n"
            f"sys.exit(main(['tokenize', sys.argv[1], 'hi']))\n")
    big = tmp_path / "big.gguf"
    gguf_fuzz.write_case(big, gguf_fuzz.header_of(smollm2_path), 2**30)    # 1 GiB, sparse
    r = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "cannot map the file into memory" in r.stderr.strip().splitlines()[-1]


# ---- the fuzz test ------------------------------------------------------------------------

N_CASES = 10_000


def test_fuzzed_real_headers(tmp_path):
    """10,000 mutants of the real headers: each a TinyLLMError or a clean load, none over
    2 s of CPU or 200 MiB of RSS (tests/gguf_fuzz.py stops a case at either limit).

    In a child process with an address-space limit, so that a runaway allocation is an
    error there instead of trouble for the machine."""
    out = tmp_path / "fuzz.json"
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, resource.RLIM_INFINITY))\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import gguf_fuzz\n"
            "gguf_fuzz.main(['--cases', sys.argv[2], '--seed', '0', '--json', sys.argv[3]])\n")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(N_CASES), str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=3000)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert rep["cases"] == N_CASES
    assert rep["seeds_load"], rep                 # the unmutated headers load cleanly
    assert rep["defects"] == [], rep["defects"][:20]
    # the mutator is doing its job: every kind ran, and some mutants still load
    assert set(rep["by_kind"]) == set(gguf_fuzz.KINDS)
    assert rep["ok"] > 100 and rep["error"] > 5000, rep
    assert rep["max_cpu_s"] < gguf_fuzz.CPU_LIMIT and rep["max_peak_rss"] < gguf_fuzz.RSS_LIMIT


REGRESSIONS = sorted(gguf_fuzz.REGRESSIONS.glob("*.gguf-header"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_fuzz_regressions(tmp_path, path):
    """Cases that crashed or ran away before the parser was hardened."""
    size = int(path.with_suffix(".size").read_text())
    o = gguf_fuzz.run_case(tmp_path / "case.gguf", "regression", path.read_bytes(), size,
                           gguf_fuzz._Watch(gguf_fuzz.CPU_LIMIT, gguf_fuzz.RSS_LIMIT))
    assert o.result in ("ok", "error"), o.result
    assert not gguf_fuzz.bad(o), (o.result, o.cpu_s, o.peak_rss)


def test_regression_fixtures_are_small():
    assert REGRESSIONS, "no regression fixtures"
    assert all(p.stat().st_size < 64 * 1024 for p in REGRESSIONS)
