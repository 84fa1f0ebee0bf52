"""Tensor parallelism over MPI: one model across the ranks of an `mpirun` job.

    mpirun -n 2 xllm-main --weight model.gguf --prompt "Once upon a time"
    mpirun -n 2 python script.py        # script: LLM(path, tensor_parallel=2)

shard.py: which slice of each weight a rank holds and the checks that refuse a split;
mpi.py: mpi4py, the C allreduce hook, the per-step broadcast and logits gather;
model.py: ParallelModel (rank 0), the followers' loop and the start-up handshake.
"""
from .mpi import launched_rank, launched_world_size
from .shard import Shard, check_split, fingerprint, vocab_bounds

__all__ = ["launched_rank", "launched_world_size", "Shard", "check_split", "fingerprint", "vocab_bounds", "load"]


def load(*args, **kwargs):
    """xllm.parallel.model.load (imported on use: it needs mpi4py)."""
    from .model import load as _load
    return _load(*args, **kwargs)
