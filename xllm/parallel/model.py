"""ParallelModel: one model over the N ranks of an MPI job, and how every rank gets there.

Rank 0 is the model the engine sees: each `step` broadcasts the batch (tokens, positions,
sequence indices, block tables, logit rows: two MPI_Bcast), runs its slice of the decoder
pass, and gathers the vocabulary slices of the logits (one MPI_Gatherv).  The other ranks
run `follow`: receive a batch, run the same pass on their slices, send their logits, until
rank 0 says stop.  Inside a pass the ranks meet twice per layer in the C allreduce hook.
Rank 0 keeps the scheduler's block tables; every rank's KV pool has the same block count and
holds its own heads.

Start-up is one collective: every rank opens the file, checks the split and loads its slices,
catching any error; then all ranks exchange (error, fingerprint, settings).  A rank that failed
or was given a different file makes rank 0 raise ValueError naming it, and every rank stops,
before any step can wait on it.
"""
from __future__ import annotations

import atexit
import sys
from typing import Optional

import numpy as np

from ..model import Model, resolve_threads, usable_cores
from .mpi import STEP, STOP, THREADS, Comm, import_mpi
from .shard import Shard, check_split, fingerprint


class ParallelModel(Model):
    """Model whose decoder pass runs tensor-parallel over `comm` (rank 0's view)."""

    def __init__(self, ckpt, comm: Comm, **kwargs):
        self.comm = comm
        super().__init__(ckpt, shard=Shard(ckpt.config, comm.rank, comm.size), **kwargs)
        self.allreduce = comm.allreduce_hook()
        self.decoder.set_allreduce(*self.allreduce.hook, keepalive=self.allreduce)
        self.bounds = self.shard.vocab_bounds
        self.stopped = False

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights this rank streams per decode step (its slices)."""
        from ..formats import layer_tensor_shapes
        names = [n for n, s in layer_tensor_shapes(self.config).items() if len(s) == 2]
        return self.shard.weight_bytes({n: self.checkpoint.tensors[n] for n in names})

    def _run_local(self, tokens, pos, seq, tables, rows) -> np.ndarray:
        logits = np.empty((len(rows), self.decoder.logits_width), dtype=np.float32)
        self.decoder.step(tokens, pos, seq, tables, rows, logits)
        self.allreduce.check()
        return logits

    def _forward(self, tokens, pos, seq, tables, rows) -> np.ndarray:
        if self.stopped:
            raise RuntimeError("the tensor-parallel ranks were stopped (ParallelModel.stop)")
        self.comm.send_step(tokens, pos, seq, tables, rows)
        local = self._run_local(tokens, pos, seq, tables, rows)
        return self.comm.gather_logits(local, self.bounds, self.config.vocab_size)

    def set_threads(self, threads: int) -> None:
        self.comm.send_command(THREADS, threads)
        super().set_threads(threads)

    def allreduce_stats(self, reset: bool = False) -> dict:
        """Rank 0's allreduce calls, bytes and seconds (inside the decoder pass), and the
        per-step broadcast and logits gather."""
        out = dict(self.allreduce.stats(reset))
        out.update(gather_bytes=self.comm.gather_bytes, gather_seconds=self.comm.gather_seconds,
                   bcast_seconds=self.comm.bcast_seconds)
        if reset:
            self.comm.gather_bytes = 0
            self.comm.gather_seconds = self.comm.bcast_seconds = 0.0
        return out

    def stop(self) -> None:
        """Release the followers (they leave `follow` and exit); idempotent."""
        if not self.stopped and self.comm.rank == 0:
            self.stopped = True
            self.comm.send_command(STOP)

    def follow(self) -> None:
        """A follower's loop: run every step rank 0 broadcasts until it says stop.  Any error
        here ends the whole job (MPI_Abort), so rank 0 never waits on a dead follower."""
        comm = self.comm
        try:
            while True:
                command, argument, arrays = comm.receive()
                if command == STOP:
                    return
                if command == THREADS:
                    Model.set_threads(self, argument)
                    continue
                if command != STEP:
                    raise RuntimeError(f"unknown command {command} from rank 0")
                try:
                    local = self._run_local(*arrays)
                except ValueError:
                    # rank 0 validated the same batch and raised the same error before any
                    # collective: skip it as rank 0 did
                    continue
                comm.gather_logits(local, self.bounds, self.config.vocab_size)
        except KeyboardInterrupt:          # Ctrl-C reached every rank: rank 0 reports it
            comm.abort(130)
        except BaseException as exc:       # noqa: BLE001 - any failure must end the job
            print(f"xllm: rank {comm.rank}: error: {exc}; ending the job", file=sys.stderr, flush=True)
            comm.abort(1)


def load(path, tensor_parallel: int, threads: Optional[int] = None, max_batch_tokens: int = 256,
         kv_blocks: Optional[int] = None, block_size: int = 16, max_seqs: int = 1,
         prefix_cache: bool = True, kv_type: str = "auto", kv_memory: Optional[int] = None) -> ParallelModel:
    """Every rank of the MPI job calls this with the same arguments.  Rank 0 gets the model
    back; the other ranks serve steps until rank 0 stops, then exit the process (SystemExit 0;
    2 when start-up failed).  ValueError on rank 0 when any rank failed to load (naming it and
    its error), was given a different file, or the split does not fit the model."""
    from ..engine import open_model_checkpoint
    MPI = import_mpi()
    world = MPI.COMM_WORLD.Get_size()
    if world != tensor_parallel:
        raise ValueError(f"tensor_parallel = {tensor_parallel} needs {tensor_parallel} MPI ranks, "
                         f"this job has {world}: start it with mpirun -n {tensor_parallel}")
    # the collectives of start-up come first: after them a rank may fail alone
    comm = Comm()
    local_ranks = comm.local_size()
    model, error, digest = None, None, None
    try:
        ckpt = open_model_checkpoint(path)
        check_split(ckpt.config, tensor_parallel, ckpt.tensors)
        digest = fingerprint(ckpt)
        comm.capacity = max_batch_tokens * ckpt.config.dim
        threads = resolve_threads(threads) if threads is not None else max(1, usable_cores() // local_ranks)
        model = ParallelModel(ckpt, comm, threads=threads, max_batch_tokens=max_batch_tokens,
                              kv_blocks=kv_blocks, block_size=block_size, max_seqs=max_seqs,
                              prefix_cache=prefix_cache, kv_type=kv_type, kv_memory=kv_memory)
    except Exception as exc:          # noqa: BLE001 - reported to rank 0, never left to hang it
        text = str(exc).splitlines()[0] if str(exc) else ""
        error = text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"
    rank = MPI.COMM_WORLD.Get_rank()
    settings = None if model is None else (model.kv.n_blocks, block_size, max_batch_tokens)
    reports = MPI.COMM_WORLD.allgather((error, digest, settings, MPI.Get_processor_name()))
    problem = startup_problem(reports, path)
    if problem is not None:
        if rank == 0:
            raise ValueError(problem)
        raise SystemExit(2)
    if rank == 0:
        atexit.register(model.stop)      # an error on rank 0 later still releases the followers
        return model
    model.follow()
    raise SystemExit(0)


def startup_problem(reports, path) -> Optional[str]:
    """The first problem among the ranks' (error, fingerprint, settings, host) reports, or None."""
    errors = {error for error, *_ in reports}
    if len(errors) == 1 and None not in errors:        # the same on every rank: the split, the file
        return f"{path}: {errors.pop()}"
    for r, (error, _, _, host) in enumerate(reports):
        if error is not None:
            return f"rank {r} (host {host}) failed to load {path}: {error}"
    digest0, settings0 = reports[0][1], reports[0][2]
    for r, (_, digest, settings, host) in enumerate(reports):
        if digest != digest0:
            return (f"rank {r} (host {host}) was given a different model file than rank 0 "
                    f"(header and tensor table checksum {digest[:12]} vs {digest0[:12]}); "
                    f"every rank must load the same file")
        if settings != settings0:
            return (f"rank {r} (host {host}) has other settings than rank 0: (kv blocks, block size, "
                    f"max batch tokens) {settings} vs {settings0}")
    return None
