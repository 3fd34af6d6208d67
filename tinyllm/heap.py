"""glibc's malloc, set up for a forward pass's scratch: reused within a call, given back after it.

A prefill allocates its activations layer after layer ([T, E] and [T, F] floats, the int8
x of each product), the same sizes in every layer.  Where those buffers come from decides
two things:

  * glibc's default gives each block of 128 KiB and up its own mmap, but raises that
    threshold each time such a block is freed (up to 32 MiB).  After the first prefill the
    buffers come from the heap and, freed, stay in RSS: +18 MiB on SmolLM2 after one
    512-token prefill.
  * a threshold fixed at 256 KiB (what tinyllm did until it measured this) keeps RSS down,
    but then every layer's buffers are fresh pages that the kernel faults in and zeroes:
    12-20 % of a 1.5B prefill (Qwen2.5-Coder-1.5B, 128 tokens, 2 threads, Zen 3: 60-65
    tok/s with it, 75-79 without).

So `configure()` lets blocks up to glibc's largest threshold (32 MiB on 64-bit) come from
the heap, where layer n+1 reuses layer n's pages, and keeps freed heap until `trim()`,
which Model.forward calls at the end of every call of more than one token (~1.5 ms; RSS
then is back within ~1 MiB of what it was before the call).  The memory ledger's scratch
is therefore peak memory, not memory held between calls, as before.  The price is the
heap's fragmentation during a call: peak RSS over a 512-token prompt rose by 4-6 MiB on
SmolLM2 and Gemma 3 270M, 7-9 on Qwen2.5-Coder-0.5B and 15-20 on the 1.5B
(scripts/bench_memory.py, before and after).  Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameters (malloc.h)


def _libc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def configure() -> None:
    """Blocks up to glibc's largest mmap threshold (4 MiB x sizeof(long): 32 MiB on 64-bit,
    16 MiB on armhf) from the heap; freed heap kept (up to twice that) until trim()."""
    if _LIBC is None:
        return
    largest = 4 * 2**20 * ctypes.sizeof(ctypes.c_long)
    _LIBC.mallopt(M_MMAP_THRESHOLD, largest)
    _LIBC.mallopt(M_TRIM_THRESHOLD, 2 * largest)


def trim() -> None:
    """Give the heap's free pages back to the OS (malloc_trim(0): every arena, and the free
    pages inside the heap as well as at its top)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
