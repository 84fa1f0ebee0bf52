"""xllm: a CPU inference engine for LLaMA-family models.

    from xllm import LLM, SamplingParams
"""
__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name):
    # Imported lazily so that pure-Python tools (tokenizer, converters) load without the
    # compiled extension being imported first.
    if name == "LLM":
        from .llm import LLM
        return LLM
    if name == "SamplingParams":
        from .sampling import SamplingParams
        return SamplingParams
    raise AttributeError(f"module 'xllm' has no attribute {name!r}")
