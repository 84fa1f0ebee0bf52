"""Run under mpiexec by tests/test_tensor_parallel.py: greedy decoding of a batch of token-id
prompts on a tensor-parallel model; rank 0 saves the tokens and every step's logits.

    mpiexec -n 2 python tests/tp_worker.py MODEL OUT.npz '[[1, 5, 9], [1, 7]]' N_NEW [--die-after K]

--die-after K: rank 1 kills itself (SIGKILL) at its K-th step (the failure test).
The 1-rank reference runs `greedy` in the test process on a plain Model.
"""
import json
import os
import signal
import sys

import numpy as np

from xllm.model import Chunk


def greedy(model, prompts, n_new):
    """One step prefills every prompt (logits at every position), then each step decodes one
    token of every sequence.  Returns (generated tokens per prompt, logits of every step)."""
    for i, p in enumerate(prompts):
        assert model.kv.reserve(i, len(p) + n_new)
    outs = model.step([Chunk(i, list(p), 0, "all") for i, p in enumerate(prompts)])
    logits = [o.copy() for o in outs]
    tokens = [[int(np.argmax(o[-1]))] for o in outs]
    for _ in range(n_new - 1):
        outs = model.step([Chunk(i, [t[-1]], len(prompts[i]) + len(t) - 1) for i, t in enumerate(tokens)])
        for t, o in zip(tokens, outs):
            logits.append(o.copy())
            t.append(int(np.argmax(o[-1])))
    for i in range(len(prompts)):
        model.kv.release(i)
    return tokens, logits


def main(argv):
    from xllm import parallel
    from xllm.parallel.model import ParallelModel
    path, out, prompts, n_new = argv[0], argv[1], json.loads(argv[2]), int(argv[3])
    if "--die-after" in argv:
        die_after = int(argv[argv.index("--die-after") + 1])
        run_local, calls = ParallelModel._run_local, [0]

        def dying(self, *arrays):
            calls[0] += 1
            if self.comm.rank == 1 and calls[0] >= die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return run_local(self, *arrays)
        ParallelModel._run_local = dying
    size = parallel.launched_world_size()
    model = parallel.load(path, size, threads=1, max_batch_tokens=64, max_seqs=len(prompts))
    tokens, logits = greedy(model, prompts, n_new)
    stats = model.allreduce_stats()
    np.savez(out, tokens=np.array(tokens, dtype=np.int64), **{f"logits{i}": a for i, a in enumerate(logits)})
    print(json.dumps({"stats": stats, "weight_bytes": model.weight_bytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
