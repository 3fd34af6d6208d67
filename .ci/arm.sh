#!/usr/bin/env bash
# ARM CI job (issue 14): tinyllm's kernels and agreement tests under qemu-user, on
# arm64 (numba; the sdot path as on a Pi 5 and the plain-NEON path as on a Pi 4)
# and on armhf (32-bit Pi OS: Debian's packages, numpy path).  Called by .ci/run.
#
# Everything slow to make lives in a cache outside the clone (CI clones afresh),
# ${TINYLLM_CI_CACHE:-$HOME/.cache/tinyllm-ci}, keyed so that a stale entry is never used:
#   roots/<arch>-<hash of the Debian package list>     the mmdebstrap root (with its venv)
#   wheels/aarch64-<hash of the requirement list>       wheels fetched on the host
#   numba/<qemu cpu>-<hash of tinyllm/**/*.py, wheels>  NUMBA_CACHE_DIR for that CPU
#   src*/                                               the clone's files as the roots see them
# After any change under tinyllm/ the first run recompiles every kernel under emulation.
# Usage: .ci/arm.sh [all|prepare|test|arm64|armhf|exec ARCH CMD...]  (.ci/run: prepare in the background
# during the x86 tests, then test; needs root for mmdebstrap, binfmt and chroot)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
CACHE=${TINYLLM_CI_CACHE:-$HOME/.cache/tinyllm-ci}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
SUITE=bookworm
# emulation shares the machine: lowest priority
NICE="nice -n 19"

# ---- the one list of what runs where -------------------------------------------------
# arm64 (numba): every decode and prefill kernel against its numpy oracle, then greedy
# agreement on SmolLM2 and Gemma; the second CPU model repeats the int8 kernel tests;
# armhf runs a numpy-path subset.  The test lists are in tests/conftest.py (ARM_TESTS...).
# test_serve.py imports the HTTP clients (ollama, openai, httpx), which the ARM venvs do
# not install: none of its tests is in an ARM subset, so it is not collected there.
ARM64_PYTEST=(-m arm --ignore=tests/test_serve.py)
ARMHF_PYTEST=(-m armhf --ignore=tests/test_serve.py)
ARM64_CPU_PYTEST=(-m arm_cpu --ignore=tests/test_serve.py)
# qemu CPU models: "max" has dotprod (Pi 5's Cortex-A76 class), cortex-a72 is the Pi 4
ARM64_CPUS=(max cortex-a72)
declare -A EXPECT_SIMD=([max]=dotprod [cortex-a72]=neon)   # what tinyllm must pick on each
PROMPT="The capital of France is"

ARM64_DEBS=python3,python3-venv,python3-pip,ca-certificates
# 32-bit Pi OS: no numba/numpy/regex wheels on PyPI, so Debian's own packages; python3-numba
# (0.56.4, older than tinyllm supports) is there on purpose: tinyllm must not use it.
ARMHF_DEBS=python3,python3-venv,python3-pip,ca-certificates,python3-numpy,python3-regex,python3-yaml,python3-tqdm,python3-jinja2,python3-prompt-toolkit,python3-pytest,python3-pexpect,python3-numba
ARM64_REQS="numpy numba gguf regex prompt_toolkit jinja2 pytest pexpect"
ARMHF_PIP="gguf requests urllib3 idna certifi charset_normalizer setuptools"

key() { printf '%s' "$*" | sha256sum | cut -c1-12; }
log() { printf '[arm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
stage() {  # stage NAME CMD...: run it, then report its wall and CPU time (user+sys, children too)
    local name=$1; shift
    log "$name ..."
    local TIMEFORMAT="[arm] $name: %0R s wall, %0U+%0S s CPU"
    time "$@"
}

setup_host() {
    if [ "$(id -u)" != 0 ]; then
        log "the ARM job needs root (apt, binfmt_misc, mmdebstrap, chroot); TINYLLM_CI_ARM=0 .ci/run skips it"
        return 1
    fi
    local need=()
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    if ((${#need[@]})); then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    for a in aarch64 arm; do
        [ -e /proc/sys/fs/binfmt_misc/qemu-$a ] || update-binfmts --enable qemu-$a
    done
}

root_dir() { echo "$CACHE/roots/$1-$(key "$SUITE" "$2")"; }

make_root() {  # make_root ARCH PACKAGES: mmdebstrap once, into a temporary name, then rename
    local dir; dir=$(root_dir "$1" "$2")
    [ -e "$dir/.complete" ] && return 0
    rm -rf "$dir.tmp"; mkdir -p "$CACHE/roots"
    $NICE mmdebstrap --quiet --arch="$1" --variant=apt --include="$2" "$SUITE" "$dir.tmp"
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
    keep_newest 1 "$CACHE/roots/$1-"     # an old package list's root is never used again
}

keep_newest() {  # keep_newest N PREFIX: delete all but the N newest cache entries PREFIX*
    local old
    old=$(ls -dt "$2"* 2>/dev/null | grep -v '\.tmp$' | tail -n +$(($1 + 1))) || true
    [ -z "$old" ] || rm -rf $old
}

wheels_dir() { echo "$CACHE/wheels/aarch64-$(key "$ARM64_REQS")"; }

fetch_wheels() {  # on the host: pip picks aarch64 wheels for the root's Python (bookworm: 3.11)
    local dir; dir=$(wheels_dir)
    [ -e "$dir/.complete" ] && return 0
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    python3 -m pip download -q --dest "$dir.tmp" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        $ARM64_REQS setuptools
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

armhf_wheels_dir() { echo "$CACHE/wheels/armhf-$(key "$ARMHF_PIP")"; }

fetch_armhf_wheels() {  # the pure-Python packages Debian lacks (gguf; requests for it), as pip would get them
    local dir; dir=$(armhf_wheels_dir)
    [ -e "$dir/.complete" ] && return 0
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    python3 -m pip download -q --dest "$dir.tmp" --no-deps --only-binary=:all: \
        --platform linux_armv7l --python-version 3.11 --implementation cp --abi cp311 --abi none $ARMHF_PIP
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

numba_dir() {  # numba_dir CPU: keyed by every source file of tinyllm, the wheels (numba's version) and the CPU
    local h; h=$(cd "$SRC" && find tinyllm -name '*.py' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
    local d="$CACHE/numba/$1-$(key "$h" "$(wheels_dir)")"
    mkdir -p "$d"; touch "$d"            # the newest is the one in use: keep_newest spares it
    keep_newest 3 "$CACHE/numba/$1-"
    echo "$d"
}

stage_src() {  # the clone's files as the root sees them at /src, every mtime the same fixed date:
    # numba's cache stamps each entry with its source file's mtime, and a fresh clone's
    # mtimes are new each time, so the clone itself would make every cached kernel stale
    local dst="$CACHE/src${SRCSUFFIX:-}"
    rm -rf "$dst.tmp"; mkdir -p "$dst.tmp"
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -f "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$dst.tmp")
    find "$dst.tmp" -exec touch -h -d @946684800 {} +
    # the models as real files (in the clone they may be symlinks that mean nothing in the root)
    local f
    for f in "$SRC"/models/*.gguf; do
        [ -e "$f" ] || continue
        ln -f "$(readlink -f "$f")" "$dst.tmp/models/" 2>/dev/null || cp "$(readlink -f "$f")" "$dst.tmp/models/"
    done
    rm -rf "$dst"; mv "$dst.tmp" "$dst"
    SRCCOPY=$dst
}

inroot() {  # inroot ROOT WHEELS NUMBA [VAR=VALUE...] -- CMD...: run CMD in ROOT, the clone at /src
    local root=$1 wheels=$2 numba=$3; shift 3
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
    mkdir -p "$numba"
    # a private mount namespace: the bind mounts vanish with the command, nothing to clean up
    unshare --mount --propagation private -- bash -c '
        set -e; r=$1 src=$2 wheels=$3 numba=$4; shift 4
        mount --rbind /proc "$r/proc"; mount --rbind /sys "$r/sys"; mount --rbind /dev "$r/dev"
        for d in src wheels numba; do mkdir -p "$r/$d"; done
        mount --bind "$src" "$r/src"
        mount --bind "$wheels" "$r/wheels"; mount --bind "$numba" "$r/numba"
        exec chroot "$r" "$@"' _ "$root" "$SRCCOPY" "$wheels" "$numba" \
        /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/bin:/bin PYTHONUNBUFFERED=1 \
        NUMBA_CACHE_DIR=/numba "${envs[@]}" \
        $NICE bash -c 'cd /src && "$@"' _ "$@"
}

make_venv64() {  # the venv inside the arm64 root, rebuilt when the wheels change
    local root=$1 wheels=$2 k; k=$(basename "$wheels")
    [ "$(cat "$root/opt/venv/.ci-key" 2>/dev/null)" = "$k" ] && return 0
    rm -rf "$root/opt/venv"
    inroot "$root" "$wheels" "$CACHE/numba/unused" -- bash -c \
        "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links /wheels $ARM64_REQS"
    echo "$k" > "$root/opt/venv/.ci-key"
}

make_venvhf() {  # the README's 32-bit Pi OS install: Debian's packages + pip, here offline
    local root=$1 wheels=$2 k; k=$(basename "$wheels")
    [ "$(cat "$root/opt/venv/.ci-key" 2>/dev/null)" = "$k" ] && return 0
    rm -rf "$root/opt/venv"
    inroot "$root" "$wheels" "$CACHE/numba/unused" -- bash -c \
        "python3 -m venv --system-site-packages /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links /wheels -e /src"
    echo "$k" > "$root/opt/venv/.ci-key"
}

x86_reference() {  # the x86 text, from the venv .ci/run made, and the part of it that must match
    local out="$CACHE/x86-run.txt"
    .venv/bin/tinyllm run smollm2-135m -p "$PROMPT" -n 16 --temp 0 > "$out"
    .venv/bin/python .ci/clear_prefix.py smollm2-135m "$PROMPT" 16 > "$CACHE/x86-clear.txt"
    echo "$out"
}

compare_run() {  # compare_run NAME FILE: the x86 text, or at least all of it before a near-tie?
    if cmp -s "$CACHE/x86-run.txt" "$2"; then
        log "$1: tinyllm run --temp 0 gives the x86 text: $(tr '\n' ' ' < "$2")"
    elif python3 -c 'import sys; a, b = (open(f, "rb").read() for f in sys.argv[1:]); sys.exit(not b.startswith(a))' \
            "$CACHE/x86-clear.txt" "$2"; then
        # .ci/clear_prefix.py: past x86's first step with a top-2 gap < 0.5 logit another
        # machine's float summation order may choose the other token
        log "$1: tinyllm run --temp 0 gives the x86 text up to x86's first near-tie: $(tr '\n' ' ' < "$2")"
    else
        log "$1: tinyllm run --temp 0 DIFFERS from x86 before its first near-tie"
        diff "$CACHE/x86-run.txt" "$2" || true
        return 1
    fi
}

run_arm64() {
    local root wheels; root=$(root_dir arm64 "$ARM64_DEBS"); wheels=$(wheels_dir)
    stage "arm64 root" make_root arm64 "$ARM64_DEBS"
    stage "arm64 wheels" fetch_wheels
    stage "arm64 venv" make_venv64 "$root" "$wheels"
    local cpu=${ARM64_CPUS[0]} out="$CACHE/arm64-run.txt"
    stage "arm64 ($cpu) tinyllm run" inroot "$root" "$wheels" "$(numba_dir "$cpu")" QEMU_CPU="$cpu" -- \
        python -m tinyllm run smollm2-135m -p "$PROMPT" -n 16 --temp 0 > "$out"
    compare_run "arm64 ($cpu)" "$out"
    stage "arm64 ($cpu) pytest" inroot "$root" "$wheels" "$(numba_dir "$cpu")" QEMU_CPU="$cpu" \
        TINYLLM_CI_EXPECT_SIMD="${EXPECT_SIMD[$cpu]}" -- python -m pytest -q -p no:cacheprovider "${ARM64_PYTEST[@]}"
}

run_arm64_cpus() {  # the int8 kernels again as the other CPUs (a Pi 4), in the root run_arm64 made
    local root wheels cpu; root=$(root_dir arm64 "$ARM64_DEBS"); wheels=$(wheels_dir)
    for cpu in "${ARM64_CPUS[@]:1}"; do
        stage "arm64 ($cpu) pytest" inroot "$root" "$wheels" "$(numba_dir "$cpu")" QEMU_CPU="$cpu" \
            TINYLLM_CI_EXPECT_SIMD="${EXPECT_SIMD[$cpu]}" -- python -m pytest -q -p no:cacheprovider "${ARM64_CPU_PYTEST[@]}"
    done
}

run_armhf() {
    local root wheels; root=$(root_dir armhf "$ARMHF_DEBS"); wheels=$(armhf_wheels_dir)
    stage "armhf root" make_root armhf "$ARMHF_DEBS"
    stage "armhf wheels" fetch_armhf_wheels
    stage "armhf venv" make_venvhf "$root" "$wheels"
    local out="$CACHE/armhf-run.txt"
    stage "armhf tinyllm run" inroot "$root" "$wheels" "$CACHE/numba/unused" -- \
        python -m tinyllm run smollm2-135m -p "$PROMPT" -n 16 --temp 0 > "$out"
    compare_run armhf "$out"
    stage "armhf pytest" inroot "$root" "$wheels" "$CACHE/numba/unused" -- \
        python -m pytest -q -p no:cacheprovider "${ARMHF_PYTEST[@]}"
}

prepare() {  # what needs nothing from the x86 run: roots, wheels, venvs, both arches at once
    setup_host
    local rc=0 a b
    { stage "arm64 root" make_root arm64 "$ARM64_DEBS"; stage "arm64 wheels" fetch_wheels
      stage "arm64 venv" make_venv64 "$(root_dir arm64 "$ARM64_DEBS")" "$(wheels_dir)"; } &
    a=$!
    { stage "armhf root" make_root armhf "$ARMHF_DEBS"; stage "armhf wheels" fetch_armhf_wheels
      stage "armhf venv" make_venvhf "$(root_dir armhf "$ARMHF_DEBS")" "$(armhf_wheels_dir)"; } &
    b=$!
    wait $a || rc=1; wait $b || rc=1
    return $rc
}

run_tests() {  # both arches side by side (2 cores), each into its own log, shown when done.
    # armhf (numpy, a few minutes) is followed on its core by the Pi 4 run of the int8 tests,
    # which then overlaps aarch64's long first compile (cold: 13 of its 43 minutes).  The
    # roots must be prepared (prepare: .ci/run and `all` do it first).
    setup_host
    stage "x86 tinyllm run" x86_reference
    local rc=0 a b
    run_arm64 > "$CACHE/arm64.log" 2>&1 & a=$!
    {   # each in a job of its own: inside an `||` list bash would ignore set -e in the function
        r=0
        run_armhf > "$CACHE/armhf.log" 2>&1 & h=$!
        wait $h || r=1
        run_arm64_cpus > "$CACHE/arm64-cpus.log" 2>&1 & c=$!
        wait $c || r=1
        exit $r
    } & b=$!
    wait $a || rc=1; cat "$CACHE/arm64.log"
    wait $b || rc=1; cat "$CACHE/armhf.log" "$CACHE/arm64-cpus.log"
    [ $rc = 0 ] && log "ARM job passed" || log "ARM job FAILED"
    return $rc
}

# one job at a time per cache and arch (a second CI run waits)
lock() { local fd; for a in "$@"; do exec {fd}> "$CACHE/.lock-$a"; flock "$fd"; done; }
# (each with its own copy of the sources: a copy is replaced at the start of a job)
case "${1:-all}" in
    arm64) lock arm64; SRCSUFFIX= ;;
    armhf) lock armhf; SRCSUFFIX=-armhf ;;
    exec) SRCSUFFIX="-exec-${2:-}-${QEMU_CPU:-max}"; lock "${SRCSUFFIX#-}" ;;
    *) lock arm64 armhf; SRCSUFFIX= ;;
esac
stage_src
case "${1:-all}" in
    prepare) prepare ;;
    test) run_tests ;;
    all) prepare && run_tests ;;
    arm64) setup_host; x86_reference >/dev/null; run_arm64; run_arm64_cpus ;;
    armhf) setup_host; x86_reference >/dev/null; run_armhf ;;
    exec)  # exec arm64|armhf CMD...: a command in a prepared root, e.g. tinyllm bench
        a=$2; shift 2
        if [ "$a" = arm64 ]; then
            inroot "$(root_dir arm64 "$ARM64_DEBS")" "$(wheels_dir)" "$(numba_dir "${QEMU_CPU:-max}")" \
                QEMU_CPU="${QEMU_CPU:-max}" -- "$@"
        else
            inroot "$(root_dir armhf "$ARMHF_DEBS")" "$(armhf_wheels_dir)" "$CACHE/numba/unused" -- "$@"
        fi ;;
    *) echo "usage: $0 [all|prepare|test|arm64|armhf|exec ARCH CMD...]" >&2; exit 2 ;;
esac
