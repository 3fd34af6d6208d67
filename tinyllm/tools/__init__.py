"""The tools around the engine: what a reader of the inference code can skip.

    quantize/     float -> GGUF blocks: llama.cpp's reference quantizers, its per-tensor
                  type mixes, the writer (`tinyllm quantize`)
    inspect.py    tensors and blocks laid open (`tinyllm inspect`)
    ladder.py     every quant type of one model side by side (`tinyllm ladder`)
    perplexity.py perplexity over windows; kld.py: KL divergence between two models
    memory.py     the memory ledger, planned vs measured (`tinyllm mem`, chat's /mem)
    ollama.py     what each Ollama version would report for the same model
"""
