"""Turning a conversation into the text a model was trained to continue.

Instruction-tuned GGUFs carry their own Jinja template in `tokenizer.chat_template`
(the same one Hugging Face uses).  We render it in Jinja's sandbox, because the
template comes from a downloaded file and must not be able to touch Python objects.
Models without a template get a built-in format: Gemma's turn markup for gemma
models (the Gemma GGUF here is a base model and has none), ChatML otherwise.
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import TinyLLMError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Gemma has no system role: the system text is prepended to the first user turn.
GEMMA = (
    "{% set ns = namespace(sys='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _raise(msg):
    raise TemplateError(msg)


class ChatTemplate:
    def __init__(self, source: str, name: str, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise TinyLLMError(f"the model's chat template does not parse: {e}") from None
        self.name, self.bos_token, self.eos_token = name, bos_token, eos_token

    @classmethod
    def for_model(cls, gguf, tokenizer) -> "ChatTemplate":
        src = gguf.get("tokenizer.chat_template")
        bos = tokenizer.decode([tokenizer.bos_id]) if tokenizer.bos_id is not None else ""
        eos = tokenizer.decode([tokenizer.eos_id]) if tokenizer.eos_id is not None else ""
        if src:
            return cls(src, "the model's own template", bos, eos)
        if gguf.get("general.architecture", "").startswith("gemma"):
            return cls(GEMMA, "built-in Gemma turn format", bos, eos)
        return cls(CHATML, "built-in ChatML", bos, eos)

    def render(self, messages: list, add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise TinyLLMError(f"chat template error: {e}") from None
