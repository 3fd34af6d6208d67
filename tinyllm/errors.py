"""One exception type for everything a user can get wrong.

The CLI turns a TinyLLMError into a single line on stderr and exit status 2;
anything else is a bug in tinyllm and keeps its traceback.
"""


class TinyLLMError(Exception):
    """A problem with the user's input (file, model name, prompt, option)."""
