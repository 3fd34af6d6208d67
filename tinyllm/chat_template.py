"""Turning a conversation into the token ids a model was trained to continue.

Instruction-tuned GGUFs carry their own Jinja template in `tokenizer.chat_template`
(the same one Hugging Face uses).  We render it in Jinja's sandbox, because the
template comes from a downloaded file and must not be able to touch Python objects.
Models without a template get a built-in format: Gemma's turn markup for gemma
models (the Gemma 3 GGUF here is a base model and has none), ChatML otherwise.

BOS: some templates write `{{ bos_token }}` themselves (Gemma 3's does), others
leave it to the tokenizer (`tokenizer.ggml.add_bos_token`).  Doing both gives two
BOS tokens, which measurably degrades the model, so tokenize() renders, encodes
without BOS, and then puts exactly one in front if the model wants one.
"""

from __future__ import annotations

from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import TinyLLMError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma 3's official format:
#   <bos><start_of_turn>user\n{system}\n\n{text}<end_of_turn>\n<start_of_turn>model\n{reply}<end_of_turn>\n ...
# There is no system role: the system text opens the first user turn.  The assistant's
# role is called "model", and message text is trimmed.
GEMMA = (
    "{{ bos_token }}"
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] | trim ~ '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Control tokens that open a new turn.  A model that writes one has finished its
# reply and is starting to invent the user's next message (base models do this),
# so generation stops there as it does at end-of-generation tokens.
TURN_STARTS = ("<|im_start|>", "<start_of_turn>", "<|start_header_id|>")


def _raise(msg):
    raise TemplateError(msg)


def _strftime_now(fmt: str) -> str:     # used by Llama 3 templates for "Today Date"
    return datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str, name: str, bos_token: str = "", eos_token: str = "",
                 builtin: bool = False):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise TinyLLMError(f"the model's chat template does not parse: {e}") from None
        self.source, self.name = source, name
        self.bos_token, self.eos_token = bos_token, eos_token
        self.builtin = builtin          # True: the GGUF had no template (a base model)

    @classmethod
    def for_model(cls, gguf, tokenizer) -> "ChatTemplate":
        src = gguf.get("tokenizer.chat_template")
        bos = tokenizer.decode([tokenizer.bos_id]) if tokenizer.bos_id is not None else ""
        eos = tokenizer.decode([tokenizer.eos_id]) if tokenizer.eos_id is not None else ""
        if src:
            return cls(src, "the model's own template", bos, eos)
        if str(gguf.get("general.architecture", "")).startswith("gemma"):
            return cls(GEMMA, "built-in Gemma turn format", bos, eos, builtin=True)
        return cls(CHATML, "built-in ChatML", bos, eos, builtin=True)

    def render(self, messages: list, add_generation_prompt: bool = True) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return self.template.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise TinyLLMError(f"chat template error: {e}") from None

    def tokenize(self, messages: list, tokenizer, add_generation_prompt: bool = True) -> list:
        """Token ids of the rendered conversation, with BOS exactly once if the model uses BOS."""
        text = self.render(messages, add_generation_prompt)
        ids = tokenizer.encode(text, add_bos=False, parse_special=True)
        bos = tokenizer.bos_id
        if bos is None:
            return ids
        while ids[:2] == [bos, bos]:        # a template that writes BOS twice
            ids.pop(0)
        if tokenizer.add_bos and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def turn_start_ids(self, tokenizer) -> set:
        """Ids of the control tokens that open a turn in this format (see TURN_STARTS)."""
        out = set()
        for marker in TURN_STARTS:
            if marker in self.source:
                ids = tokenizer.encode(marker, add_bos=False, parse_special=True)
                if len(ids) == 1:
                    out.add(ids[0])
        return out
