"""`tinyllm quantize IN OUT --type T [--dry-run]`: re-quantize a GGUF model.

IN is a registry name or a path; OUT a path.  T is a llama.cpp file type
(F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K):
the per-tensor types follow llama.cpp's mixes (see tinyllm/tools/quantize/mixes.py).
"""

from __future__ import annotations

import sys

from ...errors import TinyLLMError

TYPES = "F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"


def add_arguments(p):
    p.add_argument("input", metavar="IN", help="model to quantize: registry name or .gguf path")
    p.add_argument("output", metavar="OUT", nargs="?", help=".gguf path to write (not needed with --dry-run)")
    # not argparse `choices`: a wrong type must be one line from TinyLLMError, not a usage dump
    p.add_argument("--type", "-t", required=True, metavar="T", help=f"target type: {TYPES}")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--dry-run", action="store_true",
                   help="print the per-group table (types, size, bits per weight) and write nothing")


class ProgressBar:
    """`[ 12/272] ####......  blk.3.attn_v.weight  Q6_K  4.1s` on one stderr line."""

    def __init__(self, stream=sys.stderr, width: int = 24):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()

    pending = False                       # a \r line is on the terminal without its newline

    def end_line(self):
        if self.pending:
            self.stream.write("\n")
            self.pending = False

    def __call__(self, i, n, name, type_name, elapsed):
        filled = self.width * i // max(n, 1)
        line = (f"[{i:>4}/{n}] {'#' * filled}{'.' * (self.width - filled)} "
                f"{name:<32.32} {type_name:<6} {elapsed:6.1f}s")
        if self.tty:
            self.stream.write("\r" + line)
            self.pending = True
            if i == n:
                self.end_line()
        elif i == n or i % 25 == 0:       # a log file gets a line now and then, not a flood
            self.stream.write(line + "\n")
        self.stream.flush()


def run(args):
    from ...registry import resolve
    from .mixes import TARGETS
    from .model import quantize_model

    if str(args.type).upper() not in TARGETS:
        raise TinyLLMError(f"unknown quantization type {args.type!r} (choose from {TYPES})")
    src = resolve(args.input)
    if args.dry_run:
        report = quantize_model(src, None, args.type, dry_run=True)
        print(report.table())
        return 0
    if not args.output:
        raise TinyLLMError("quantize needs an output path (or --dry-run)")
    from .model import check_output_path
    check_output_path(src, args.output, overwrite=args.force)     # before minutes of work
    plan = quantize_model(src, None, args.type, dry_run=True)
    if plan.requantized:
        print(f"note: {src} is already quantized ({', '.join(plan.requantized)}); quantizing again "
              f"adds a second rounding error -- quantize from an F32/F16/BF16 copy if you have one",
              file=sys.stderr)
    bar = ProgressBar()
    try:
        report = quantize_model(src, args.output, args.type, progress=bar, overwrite=args.force)
    finally:
        bar.end_line()                    # an error message starts on its own line
    print(report.table())
    print(f"wrote {args.output}: {report.file_size / 2**20:.2f} MiB, {report.bpw:.2f} bits per weight, "
          f"{report.seconds:.1f} s", file=sys.stderr)
    return 0
