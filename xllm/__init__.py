"""xllm: a CPU inference engine for LLaMA-family models.

    from xllm import LLM, SamplingParams
"""
import os as _os

__version__ = "0.1.0"

# How long an idle OpenMP thread spins before it sleeps.  GNU libgomp's default is 300,000
# spins ("~3 ms" in its source), 20 ms on a Xeon whose `pause` takes 66 ns: next to one busy
# process a spinning thread holds the core its team-mate waits for, and every barrier of a
# step can cost a time slice (110M Q8_0 decode, 2 threads, busy machine: 2.5 s per token by
# default, 34 ms with 1,000 spins, the same run).  1,000 spins (~66 us here, less on CPUs
# with a shorter `pause`) still cover the gaps between the parallel regions of a step.  Set
# before any xllm module loads the runtime (it reads its settings once, when loaded), only
# when the user chose neither; child processes inherit it.
OPENMP_SPINCOUNT = "1000"
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
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
