"""numba, once: the cache directory, the no-numba switch, njit with caching.

numba compiles the quantized matvec kernels to machine code; without it
(32-bit Raspberry Pi OS has no numba wheels, or TINYLLM_NO_NUMBA=1) every
kernel has a pure-numpy fallback that computes the same numbers, slower.

Compiled kernels are cached on disk, so only the first run pays the compile:
in a folder of NUMBA_CACHE_DIR (default ~/.cache/tinyllm/numba) named after
everything that changes the generated code and that numba's own cache check
does not see (it sees a kernel's own file, the CPU and its own version).
"""

from __future__ import annotations

import os
import platform

from . import heap


def _cache_key() -> str:
    """A short hash of what the machine code depends on beyond a kernel's own file:
    tinyllm's sources (numba notices when a kernel's file changes, not when a function
    it calls from another file does), TINYLLM_SIMD (simd.py compiles other instructions
    under it), the numba version and the machine."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    h = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(d, f), "rb") as fh:
                    h.update(fh.read())
    h.update(os.environ.get("TINYLLM_SIMD", "").strip().lower().encode())
    try:
        h.update(version("numba").encode())
    except PackageNotFoundError:
        pass
    h.update(platform.machine().encode())
    return h.hexdigest()[:12]


CACHE_BASE = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "tinyllm", "numba")
CACHE_DIR = os.path.join(CACHE_BASE, _cache_key())

# The oldest numba the kernels are written for (pyproject.toml says the same).  An older
# one can still be importable: Debian bookworm's armhf python3-numba is 0.56.4, and a
# venv made with --system-site-packages on 32-bit Pi OS sees it.
MIN_NUMBA = (0, 58)


def _version_tuple(v: str) -> tuple:
    import re
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _installed_numba() -> str | None:
    """numba's version from its package metadata, without importing it (None: not installed)."""
    from importlib import metadata
    try:
        return metadata.version("numba")
    except metadata.PackageNotFoundError:
        return None


HAVE_NUMBA = False
numba = None
if os.environ.get("TINYLLM_NO_NUMBA", "").strip() in ("", "0"):
    _v = _installed_numba()
    if _v is not None and _version_tuple(_v) < MIN_NUMBA:
        import sys
        print(f"tinyllm: numba {_v} is older than {'.'.join(map(str, MIN_NUMBA))}, "
              "so it is not used: numpy kernels (slower)", file=sys.stderr)
    else:
        from . import cpu
        cpu.numba_target_env()     # aarch64: whether LLVM may emit the dot-product instructions
        try:
            import numba
            HAVE_NUMBA = True
            # read by each cached kernel when it is defined (not when numba is imported),
            # so this holds even if numba was imported first
            numba.config.CACHE_DIR = CACHE_DIR
        except ImportError:
            numba = None

# fastmath without nnan/ninf: lets LLVM reassociate sums into SIMD lanes and fuse
# multiply-adds, but keeps inf/nan semantics so a broken scale still shows up as nan.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

if HAVE_NUMBA:
    prange = numba.prange

    def njit(*args, **kwargs):
        """numba.njit with cache=True by default."""
        kwargs.setdefault("cache", True)
        if args and callable(args[0]):
            return numba.njit(**kwargs)(args[0])
        return numba.njit(*args, **kwargs)
else:
    prange = range

    def njit(*args, **kwargs):
        """No numba: return the Python function unchanged (callers use numpy paths)."""
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


# ---- what numba cannot say about float bits: IEEE halves, and a float from its bits --------
# numba has no float16 type, but LLVM does: the 16 bits reinterpreted as a half and
# widened (or narrowed) are one hardware instruction (F16C vcvtph2ps / vcvtps2ph on x86,
# fcvt on ARMv8) that also vectorizes.  Exact both ways for every value, subnormals, inf
# and nan included; narrowing rounds to nearest even (numpy's float32 -> float16 cast).
if HAVE_NUMBA:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def f16_to_f32(typingctx, bits):
        """uint16 bit pattern of an IEEE half -> float32."""
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())
        return _types.float32(_types.uint16), codegen

    @_intrinsic
    def f32_to_f16(typingctx, x):
        """float32 -> uint16 bit pattern of the nearest half (ties to even; beyond 65504: inf)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(builder.fptrunc(args[0], _ir.HalfType()), _ir.IntType(16))
        return _types.uint16(_types.float32), codegen

    @_intrinsic
    def f32_from_bits(typingctx, bits):
        """the float32 whose bit pattern is the int32 `bits` (vectorizes, unlike a view)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.FloatType())
        return _types.float32(_types.int32), codegen
else:
    import numpy as _np

    def f16_to_f32(bits):
        return _np.float32(_np.array(bits, _np.uint16).view(_np.float16))

    def f32_to_f16(x):
        return _np.array(x, _np.float32).astype(_np.float16).view(_np.uint16)[()]

    def f32_from_bits(bits):
        return _np.array(bits, _np.int32).view(_np.float32)[()]


_threads = None          # what set_threads() last set: numba's own getter costs ~1 us a call


def set_threads(n: int) -> int:
    """Use n threads for the parallel kernels (clamped to what numba started with)."""
    global _threads
    if not HAVE_NUMBA:
        return 1
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    _threads = n
    return n


def get_threads() -> int:
    """The thread count set_threads() chose (else numba's).  numba's own count belongs to
    each Python thread: a thread that runs kernels other than the one that chose calls
    set_threads() itself (serve does, per generation)."""
    if not HAVE_NUMBA:
        return 1
    return _threads or numba.get_num_threads()


def call_serial(kernel, *args):
    """Run a parallel kernel on the calling thread only.  For small matrices waking
    the other threads costs more than it saves (and far more when another process
    holds a core: a sleeping worker can stall the call for a whole time slice)."""
    n = numba.get_num_threads()
    if n == 1:
        return kernel(*args)
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(n)


def cache_is_warm(dispatchers) -> bool:
    """True when numba's disk cache holds machine code for every kernel, as numba itself
    judges it: an index whose source stamp matches the kernel's file and which lists at
    least one compiled signature.  (Comparing file times instead is wrong both ways: a
    fresh clone of the same sources is newer than a valid cache.)"""
    for d in dispatchers:
        try:
            if not d._cache._cache_file._load_index():     # {} when absent or stale
                return False
        except AttributeError:          # a numba without this cache layout: assume cold
            return False
    return True


def release_compiler_pages() -> int:
    """Drop LLVM's code from this process's resident memory once the kernels are loaded.

    numba compiles (or loads from its cache) through LLVM, a ~100 MB shared library
    of which ~65 MiB becomes resident while it works.  Once every kernel is machine
    code in memory, none of that library runs again until a new kernel has to be
    compiled.  Its pages are clean file-backed pages (the library's code and
    read-only data, never written), so MADV_DONTNEED just unmaps them: they stay in
    the page cache and fault back in, unchanged, if LLVM is ever needed again.  On
    a Raspberry Pi with 1 GB that is RAM for the conversation.

    Only mappings with no private (copy-on-write) pages are touched: dropping those
    would lose data.  Also returns freed heap to the OS (heap.trim).
    Linux only; elsewhere a no-op.  Returns the bytes released from RSS.
    """
    if not HAVE_NUMBA or not os.path.exists("/proc/self/smaps"):
        return 0
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    MADV_DONTNEED = 4
    released = 0
    for start, end, rss, anonymous in _library_mappings("libllvmlite"):
        if anonymous == 0 and rss > 0 and madvise(start, end - start, MADV_DONTNEED) == 0:
            released += rss
    heap.trim()
    return released


def _library_mappings(name: str):
    """(start, end, rss bytes, anonymous bytes) of each mapping of a file whose name
    contains `name`, from /proc/self/smaps."""
    out, cur = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 6)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:      # a mapping's first line
                if cur:
                    out.append(cur)
                cur = None
                if len(head) >= 6 and name in head[5]:
                    a, b = head[0].split("-")
                    cur = [int(a, 16), int(b, 16), 0, 0]
            elif cur is not None and head[0] in ("Rss:", "Anonymous:"):
                cur[2 if head[0] == "Rss:" else 3] = int(head[1]) * 1024
    if cur:
        out.append(cur)
    return out


def warm_runtime() -> None:
    """Load one tiny cached kernel, so numba's code generator is resident (for measuring
    the runtime's own memory before a model is opened)."""
    if HAVE_NUMBA:
        _runtime_probe(1)


@njit
def _runtime_probe(n):
    return n + 1
