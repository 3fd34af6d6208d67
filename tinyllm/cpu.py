"""Which vector instructions the kernels may use, decided before numba starts.

numba fixes the CPU it compiles for (LLVM's target name and feature list) when it
is first used, so this module runs before jit.py imports numba.  Only aarch64
needs it.  The int8 decode kernels (quant/simd.py) have a path for ARMv8.2's dot
product instructions (sdot: four int8 products summed into an int32 lane, 16
bytes at a time): the Raspberry Pi 5's Cortex-A76 has them, the Pi 4's
Cortex-A72 does not.  The kernel reports the feature in the auxiliary vector
(AT_HWCAP bit HWCAP_ASIMDDP, shown as `asimddp` in /proc/cpuinfo).

LLVM's own guess is not enough: an LLVM that does not know the CPU by name (and
every qemu-user emulation, where it sees the host's /proc/cpuinfo) reports a
"generic" aarch64 with no features, and then refuses to emit sdot.  So the choice
is handed to numba explicitly through NUMBA_CPU_FEATURES, and that string also
differs between the paths, which keeps their machine code apart in numba's cache
(its index is keyed by the target's CPU name and features).

TINYLLM_SIMD forces a path, as on x86, downwards only (a path the CPU lacks would
crash with an illegal instruction): "neon" compiles for a CPU without dotprod, as
a Pi 4 runs; "generic" keeps LLVM's own feature list and the plain vector code.
"""

from __future__ import annotations

import os
import platform

AARCH64 = platform.machine().lower() in ("aarch64", "arm64")
FORCE = os.environ.get("TINYLLM_SIMD", "").strip().lower()

AT_HWCAP = 16              # getauxval(3) key
HWCAP_ASIMDDP = 1 << 20    # arch/arm64/include/uapi/asm/hwcap.h


def arm_has_dotprod() -> bool:
    """True on an aarch64 CPU with the ARMv8.2 dot product (sdot/udot)."""
    if not AARCH64:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        return bool(libc.getauxval(AT_HWCAP) & HWCAP_ASIMDDP)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("Features") and "asimddp" in line.split() for line in f)
    except OSError:
        return False


ARM_DOTPROD = arm_has_dotprod() and FORCE not in ("neon", "generic")


def numba_target_env() -> None:
    """On aarch64, set NUMBA_CPU_FEATURES for the chosen path (unless the user set it):
    LLVM's host features plus +dotprod when the sdot path is used, minus it for
    TINYLLM_SIMD=neon.  Call before numba is imported."""
    if not AARCH64 or "NUMBA_CPU_FEATURES" in os.environ or FORCE == "generic":
        return
    try:
        import llvmlite.binding as llvm
        host = llvm.get_host_cpu_features().flatten()
    except Exception:       # no llvmlite (then no numba either), or LLVM could not tell
        host = ""
    extra = "+dotprod" if ARM_DOTPROD else "-dotprod"
    os.environ["NUMBA_CPU_FEATURES"] = f"{host},{extra}" if host else extra
