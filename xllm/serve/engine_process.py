"""The engine in its own process (in a thread of rank 0 under mpirun), and the front end's
handle on it.

Two one-way pipes join the processes.  Front end -> engine: ("add", request_id, prompt_ids,
params, prompt_text), ("abort", request_id), ("shutdown",).  Engine -> front end: ("ready",
info), ("fatal", message), ("outputs", [StepOutput], stats), ("error", request_id, message),
("stats", stats).  The engine loop takes every waiting message before each step, so a new
request joins the batch at the next step and an abort frees its blocks before it.  When
the engine process dies its pipe end closes; the front end's reader thread sees EOF, fails
every request in flight and marks the engine dead.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Dict, List, Optional

from ..engine import ContextLimits, StepOutput


@dataclass
class EngineStats:
    running: int = 0            # sequences in the batch
    waiting: int = 0            # sequences queued in the engine
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    steps: int = 0
    kv_blocks_cached: int = 0   # free blocks keeping a cached prefix


def _stats(engine) -> EngineStats:
    kv = engine.model.kv
    return EngineStats(engine.num_running, engine.num_waiting, engine.kv_blocks_used,
                       kv.n_blocks, engine.steps, kv.n_cached_free)


def engine_main(inbox, outbox, options: dict) -> None:
    """Entry point of the engine process: load the model, then serve the step loop."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the front end's to handle
    try:
        from ..engine import Engine
        engine = Engine.load(options["weight"], threads=options.get("threads"),
                             max_seqs=options["max_seqs"], max_batch_tokens=options["max_batch_tokens"],
                             prefix_cache=options.get("prefix_cache", True),
                             kv_type=options.get("kv_type", "auto"),
                             tensor_parallel=options.get("tensor_parallel", 1))
    except Exception as exc:                         # reported by the front end, one line
        outbox.send(("fatal", f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, OSError))
                     else str(exc)))
        return
    outbox.send(("ready", {"pid": os.getpid(), "limits": engine.limits, "stats": _stats(engine)}))
    try:
        _loop(engine, inbox, outbox)
    except (EOFError, BrokenPipeError, OSError):
        return                                       # the front end is gone
    except Exception as exc:
        outbox.send(("fatal", f"engine step failed: {type(exc).__name__}: {exc}"))
        raise
    finally:
        stop = getattr(engine.model, "stop", None)   # tensor-parallel: release the other ranks
        if stop is not None:
            stop()


class EngineThread(threading.Thread):
    """The engine in a thread of this process, for an engine that must be this very process:
    rank 0 of a tensor-parallel MPI job (a child could not be an MPI rank).  It answers the
    part of multiprocessing.Process that EngineClient uses; the step loop releases the GIL in
    its kernels and MPI calls, so the front end's event loop keeps running beside it."""

    def __init__(self, inbox, outbox, options: dict):
        super().__init__(name="xllm-engine", daemon=True)
        self.inbox, self.outbox, self.options = inbox, outbox, options
        self.exitcode: Optional[int] = None

    def run(self) -> None:
        self.exitcode = 1
        try:
            engine_main(self.inbox, self.outbox, self.options)
            self.exitcode = 0
        finally:                                      # the front end's reader sees EOF
            self.outbox.close()
            self.inbox.close()

    @property
    def pid(self) -> int:
        return os.getpid()

    def kill(self) -> None:
        """A thread cannot be killed: it ends with the process (a daemon thread)."""


def _loop(engine, inbox, outbox) -> None:
    while True:
        if not engine.has_unfinished():
            inbox.poll(None)                          # idle: sleep until a message comes
        changed = False
        while inbox.poll(0):
            msg = inbox.recv()
            kind = msg[0]
            if kind == "add":
                _, rid, ids, params, prompt = msg
                try:
                    engine.add_request(rid, ids, params, prompt)
                except ValueError as exc:
                    outbox.send(("error", rid, str(exc)))
            elif kind == "abort":
                changed |= engine.abort_request(msg[1])
            elif kind == "shutdown":
                return
        if engine.has_unfinished():
            outbox.send(("outputs", engine.step(), _stats(engine)))
        elif changed:
            outbox.send(("stats", _stats(engine)))


class EngineDead(RuntimeError):
    """The engine process is gone; requests in flight end with this."""


class EngineRequestError(ValueError):
    """The engine refused a request (its message names the numbers)."""


class EngineClient:
    """The front end's side: start the engine process, submit, abort, watch it."""

    def __init__(self, options: dict):
        self.options = options
        self.process: Optional[mp.Process] = None
        self.limits: Optional[ContextLimits] = None
        self.stats = EngineStats()
        self.dead: Optional[str] = None              # why the engine is gone, when it is
        self._queues: Dict[str, asyncio.Queue] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._in_flight = 0                          # sequences submitted and not finished

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 600.0) -> None:
        """Start the engine and wait for its model to load (ValueError on failure): a spawned
        process, or with options["tensor_parallel"] > 1 a thread of this process (rank 0)."""
        ctx = mp.get_context("spawn")                # a clean process: no threads or loop copied
        to_engine_r, self._to_engine = ctx.Pipe(duplex=False)
        self._from_engine, from_engine_w = ctx.Pipe(duplex=False)
        if self.options.get("tensor_parallel", 1) > 1:
            self.process = EngineThread(to_engine_r, from_engine_w, self.options)
            self.process.start()
        else:
            self.process = ctx.Process(target=engine_main, args=(to_engine_r, from_engine_w, self.options),
                                       name="xllm-engine", daemon=True)
            self.process.start()
            to_engine_r.close()                      # the child's ends: EOF here when it dies
            from_engine_w.close()
        if not self._from_engine.poll(timeout):
            self.process.kill()
            raise ValueError(f"the engine {self.kind} did not load the model within {timeout:.0f} s")
        try:
            msg = self._from_engine.recv()
        except EOFError:
            self.process.join(5)
            raise ValueError(f"the engine {self.kind} exited while loading the model "
                             f"(exit code {self.process.exitcode})") from None
        if msg[0] == "fatal":
            self.process.join(5)
            raise ValueError(msg[1])
        info = msg[1]
        self.limits, self.stats = info["limits"], info["stats"]

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def kind(self) -> str:
        return "thread" if isinstance(self.process, EngineThread) else "process"

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start delivering engine messages to coroutines running on `loop`."""
        self._loop = loop
        threading.Thread(target=self._read, name="xllm-engine-reader", daemon=True).start()

    def shutdown(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self._to_engine.send(("shutdown",))
            except OSError:
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)

    # ------------------------------------------------------------------ messages in

    def _read(self) -> None:
        while True:
            try:
                msg = self._from_engine.recv()
            except (EOFError, OSError):
                break
            if not self._deliver(msg) or msg[0] == "fatal":
                break
        self.process.join(5)
        code = self.process.exitcode
        self._deliver(("dead", f"the engine {self.kind} (pid {self.pid}) exited with code {code}"))

    def _deliver(self, msg) -> bool:
        """Hand a message to the event loop; False once the loop is closed (the server is
        shutting down and the engine's end of the pipe closed after it)."""
        try:
            self._loop.call_soon_threadsafe(self._dispatch, msg)
        except RuntimeError:
            return False
        return True

    def _dispatch(self, msg) -> None:
        kind = msg[0]
        if kind == "outputs":
            for out in msg[1]:
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put_nowait(out)
            self.stats = msg[2]
        elif kind == "stats":
            self.stats = msg[1]
        elif kind == "error":
            q = self._queues.get(msg[1])
            if q is not None:
                q.put_nowait(EngineRequestError(msg[2]))
        elif kind in ("fatal", "dead"):
            if self.dead is None:
                self.dead = msg[1]
            for q in self._queues.values():
                q.put_nowait(EngineDead(self.dead))

    # ------------------------------------------------------------------ requests

    @property
    def waiting(self) -> int:
        """Sequences submitted and not yet running (as of the engine's last step)."""
        return max(0, self._in_flight - self.stats.running)

    async def generate(self, requests: List[tuple]) -> AsyncIterator[StepOutput]:
        """Submit (request_id, prompt_ids, params, prompt_text) tuples; yield their outputs
        as the engine steps, until every completion finished.  Leaving early (a client gone)
        aborts what is unfinished."""
        if self.dead is not None:
            raise EngineDead(self.dead)
        q: asyncio.Queue = asyncio.Queue()
        remaining: Dict[str, int] = {}
        for rid, ids, params, prompt in requests:
            self._queues[rid] = q
            remaining[rid] = params.n
        self._in_flight += sum(remaining.values())
        try:
            for rid, ids, params, prompt in requests:
                self._send(("add", rid, ids, params, prompt))
            while remaining:
                item = await q.get()
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason is not None:
                    remaining[item.request_id] -= 1
                    self._in_flight -= 1
                    if not remaining[item.request_id]:
                        del remaining[item.request_id]
                yield item
        finally:
            self._in_flight -= sum(remaining.values())
            for rid, *_ in requests:
                self._queues.pop(rid, None)
                if rid in remaining and self.dead is None:
                    self._send(("abort", rid))

    def _send(self, msg) -> None:
        try:
            self._to_engine.send(msg)
        except OSError:                 # the reader thread reports the death
            if self.dead is None:
                raise EngineDead("the engine process is not running") from None

