"""MPI for tensor parallelism, through mpi4py (the `mpi` extra): launch detection, the C
allreduce hook, the per-step broadcast of a batch and the gather of the logits.

mpi4py is imported only here and only when a run is tensor-parallel, so the core install
needs no MPI at all.
"""
from __future__ import annotations

import ctypes
import os
import time
from typing import Optional

import numpy as np

# environment variables the common launchers set for every rank: the world size, the rank
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")

STOP, STEP, THREADS = 0, 1, 2          # commands rank 0 broadcasts
HEADER = 6                              # int64: command, T, n_seqs, max_blocks, n_out, argument

# A follower waiting for rank 0's next command polls a nonblocking broadcast: it spins this
# long (the gap between two decode steps, rank 0 sampling, is shorter), then sleeps from
# IDLE_SLEEP_MIN up to IDLE_SLEEP_MAX between polls.  A blocking MPI_Bcast would busy-wait a
# whole core for as long as a server or an interactive prompt sits idle.
IDLE_SPIN_SECONDS = 0.002
IDLE_SLEEP_MIN = 50e-6
IDLE_SLEEP_MAX = 2e-3


def launched_world_size() -> int:
    """Ranks mpirun/mpiexec started (read from the launcher's environment, no MPI import);
    1 outside a launcher."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank in the launcher's job (from its environment, no MPI import); 0
    outside a launcher."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


def wait_idle(request) -> None:
    """Complete an MPI request the way an idle rank should: spin briefly, then sleep between
    polls (doubling up to IDLE_SLEEP_MAX), so a long wait leaves the core to others."""
    deadline = time.perf_counter() + IDLE_SPIN_SECONDS
    while not request.Test():
        if time.perf_counter() >= deadline:
            break
    else:
        return
    pause = IDLE_SLEEP_MIN
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, IDLE_SLEEP_MAX)


class MPIUnavailable(ImportError, ValueError):
    """mpi4py is not installed (a ValueError too, so each CLI reports it in one line)."""


def import_mpi():
    """mpi4py's MPI module, or MPIUnavailable saying how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(f"tensor parallelism needs mpi4py and an MPI library ({exc}): "
                             f"pip install 'xllm[mpi]'") from None
    return MPI


class Comm:
    """The model's own communicator (a duplicate of COMM_WORLD) and the collectives a step needs."""

    def __init__(self, capacity_floats: int = 0, comm=None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.capacity = capacity_floats          # floats one allreduce may carry (set before the hook)
        self._hook = None
        self.gather_seconds = 0.0
        self.gather_bytes = 0
        self.bcast_seconds = 0.0

    def local_size(self) -> int:
        """Ranks on this host (they share its cores)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def allreduce_hook(self):
        """The C hook (xllm.parallel._allreduce.MpiAllreduce) over this communicator: the
        decoder step calls the loaded libmpi's MPI_Allreduce directly, without Python."""
        if self._hook is None:
            from ._allreduce import MpiAllreduce
            MPI = self.MPI
            fn = ctypes.cast(ctypes.CDLL(MPI.__file__).MPI_Allreduce, ctypes.c_void_p).value
            size = MPI._sizeof(MPI.Comm)
            # mpi4py hands a handle out as an unsigned 64-bit number; the C call wants the
            # signed int (MPICH) or pointer-sized value it stands for
            as_c = ctypes.c_int32 if size == 4 else ctypes.c_int64

            def handle(obj):
                return as_c(MPI._handleof(obj)).value
            self._hook = MpiAllreduce(fn, handle(self.comm), handle(MPI.FLOAT), handle(MPI.SUM),
                                      size, self.capacity)
        return self._hook

    # ------------------------------------------------------------------ start-up

    def allgather(self, obj):
        return self.comm.allgather(obj)

    # ------------------------------------------------------------------ a step

    def send_step(self, tokens, pos, seq, tables, rows) -> None:
        """Rank 0: the batch every rank runs this step."""
        t0 = time.perf_counter()
        header = np.array([STEP, len(tokens), tables.shape[0], tables.shape[1], len(rows), 0], dtype=np.int64)
        self.comm.Ibcast(header, root=0).Wait()      # nonblocking: the followers' wait() matches it
        self.comm.Bcast(np.concatenate([tokens, pos, seq, tables.reshape(-1), rows]), root=0)
        self.bcast_seconds += time.perf_counter() - t0

    def send_command(self, command: int, argument: int = 0) -> None:
        self.comm.Ibcast(np.array([command, 0, 0, 0, 0, argument], dtype=np.int64), root=0).Wait()

    def receive(self):
        """Followers: (command, argument, step arrays or None)."""
        header = np.empty(HEADER, dtype=np.int64)
        wait_idle(self.comm.Ibcast(header, root=0))
        command, T, n_seqs, max_blocks, n_out, argument = (int(v) for v in header)
        if command != STEP:
            return command, argument, None
        payload = np.empty(3 * T + n_seqs * max_blocks + n_out, dtype=np.int32)
        self.comm.Bcast(payload, root=0)
        tokens, pos, seq = payload[:T], payload[T:2 * T], payload[2 * T:3 * T]
        tables = payload[3 * T:3 * T + n_seqs * max_blocks].reshape(n_seqs, max_blocks)
        rows = payload[3 * T + n_seqs * max_blocks:]
        return command, argument, (tokens, pos, seq, tables, rows)

    def gather_logits(self, local: np.ndarray, bounds, vocab_size: int) -> Optional[np.ndarray]:
        """Every rank's (n_out, its vocabulary slice) logits into (n_out, vocab) on rank 0
        (None elsewhere)."""
        n_out = local.shape[0]
        if n_out == 0:
            return np.empty((0, vocab_size), dtype=np.float32) if self.rank == 0 else None
        t0 = time.perf_counter()
        counts = [n_out * (v1 - v0) for v0, v1 in bounds]
        displs = [n_out * v0 for v0, _ in bounds]
        recv = np.empty(n_out * vocab_size, dtype=np.float32) if self.rank == 0 else None
        spec = [recv, (counts, displs), self.MPI.FLOAT] if self.rank == 0 else None
        self.comm.Gatherv(np.ascontiguousarray(local), spec, root=0)
        out = None
        if self.rank == 0:
            out = np.empty((n_out, vocab_size), dtype=np.float32)
            for (v0, v1), d in zip(bounds, displs):
                out[:, v0:v1] = recv[d:d + n_out * (v1 - v0)].reshape(n_out, v1 - v0)
            self.gather_bytes += recv.nbytes
        self.gather_seconds += time.perf_counter() - t0
        return out

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (a follower's fatal error: rank 0 must not wait)."""
        self.MPI.COMM_WORLD.Abort(code)
