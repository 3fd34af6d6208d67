"""gguf's tensor-type constants, without the rest of the gguf package.

`import gguf` runs gguf/__init__.py, which also loads its reader, writer, numpy
dequantizers, yaml and sentencepiece: 7 MiB of resident memory that a chat never
uses.  The constants live in gguf/constants.py, which imports nothing but enum and
typing, so it is loaded on its own from the installed package.  The names and
numbers are gguf's (llama.cpp's), not a copy.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _gguf_constants():
    if "gguf.constants" in sys.modules:                 # gguf is imported anyway: share it
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")             # finds the package, does not run it
    path = os.path.join(list(spec.submodule_search_locations)[0], "constants.py")
    spec = importlib.util.spec_from_file_location("tinyllm._gguf_constants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_c = _gguf_constants()
GGMLQuantizationType = _c.GGMLQuantizationType          # type name <-> ggml type id
GGML_QUANT_SIZES = _c.GGML_QUANT_SIZES                  # type -> (block_size, type_size)
