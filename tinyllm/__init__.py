"""tinyllm: a small, readable inference engine for quantized GGUF models.

Reading order for newcomers:
  gguf_file.py  - the file format: header, metadata, tensors as numpy views over a memory map
  quant/        - one module per quantization family: block layout, numpy reference, numba kernel
  model.py      - hyper-parameters from metadata and the whole forward pass in one function
  tokenizer.py  - text <-> token ids
  sampling.py   - logits -> next token
  generate.py   - the prefill/decode loop with stop conditions
  cli.py        - the `tinyllm` command
"""

__version__ = "0.1.0"
