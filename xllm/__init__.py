"""xllm: a CPU inference engine for LLaMA-family models.

    from xllm import LLM, SamplingParams
"""
import os as _os

__version__ = "0.1.0"

# How long an idle OpenMP thread spins before it sleeps.  GNU libgomp's default is 300,000
# spins ("~3 ms" in its source), 20 ms on a Xeon whose `pause` takes 66 ns: next to one busy
# process a spinning thread holds the core its team-mate waits for, and every barrier of a
# step can cost a time slice (110M Q8_0 decode, 2 threads, busy machine: 2.5 s per token by
# default, 34 ms with 1,000 spins, the same run).  A spin's length differs ~7x between CPUs
# (66 ns on that Xeon, 9.4 ns on another, where 1,000 spins are 9 us: the worker slept in
# the gaps between a decode step's regions and each fork paid a wake-up, TinyLlama Q4_K_M
# 26.0 -> 24.3 ms per token with 3,000 spins), so the count is set from a measured spin:
# OPENMP_SPIN_US of spinning, never fewer than 1,000 spins.  Set before any xllm module
# loads the runtime (it reads its settings once, when loaded), only when the user chose
# neither; child processes inherit it.
OPENMP_SPIN_US = 30
OPENMP_MIN_SPINCOUNT = 1000


def _openmp_spincount() -> str:
    try:
        from ._spin import spin_ns
        ns = spin_ns()
    except (ImportError, ValueError):   # a source tree without the built extension
        return str(OPENMP_MIN_SPINCOUNT)
    return str(max(OPENMP_MIN_SPINCOUNT, int(OPENMP_SPIN_US * 1000 / max(ns, 0.1))))


if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = _openmp_spincount()
OPENMP_SPINCOUNT = _os.environ.get("GOMP_SPINCOUNT")   # what this process runs with (None: the user's OMP_WAIT_POLICY)

# Threads that libraries start at import (numpy's OpenBLAS workers) must not take the
# process's signals: CPython handles them on its main thread only, and a Ctrl-C that lands
# on an idle worker leaves the main thread blocked in input() for good.  A thread inherits
# its creator's signal mask, so numpy is imported here with the asynchronous signals blocked
# (the OpenMP workers block them themselves, omp_team.h).  Only when numpy is not loaded yet:
# a program that imported it first made its own threads.


def _import_numpy_with_signals_blocked():
    import signal
    import sys
    if "numpy" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        return
    synchronous = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT}
    if hasattr(signal, "SIGTRAP"):
        synchronous.add(signal.SIGTRAP)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - synchronous)
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_import_numpy_with_signals_blocked()
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
