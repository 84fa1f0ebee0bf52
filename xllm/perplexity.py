"""xllm-perplexity: how well a model predicts a text, and how far a quantized model strays.

    xllm-perplexity --weight model-q8.gguf --file text.txt --reference model-f32.gguf

The text is tokenized (BOS first) and cut into windows of the context length; each window
is scored from a fresh cache.  With --reference, the same windows run through the
reference model and we report the mean KL divergence KL(reference || model) of the
next-token distributions and how often both models rank the same token first.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np

from .cli_errors import ArgumentParser, UsageError, cli_entry, positive_int
from .kv_types import add_kv_type_option


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def windows(ids, size):
    """Consecutive windows of at most `size` tokens (each at least 2 to predict something)."""
    return [ids[s:s + size] for s in range(0, len(ids) - 1, size - 1) if len(ids[s:s + size]) >= 2]


def evaluate(llm, ids, window, reference=None) -> dict:
    """Perplexity of `llm` on ids; with a reference LLM, mean KL and top-1 agreement too."""
    nll = 0.0
    n = 0
    kl = 0.0
    agree = 0
    for w in windows(ids, window):
        lp = log_softmax(llm.logits(w)[:-1])
        targets = np.asarray(w[1:])
        nll -= lp[np.arange(len(targets)), targets].sum()
        n += len(targets)
        if reference is not None:
            lq = log_softmax(reference.logits(w)[:-1])
            kl += (np.exp(lq) * (lq - lp)).sum()
            agree += int((lq.argmax(-1) == lp.argmax(-1)).sum())
    out = {"tokens": n, "perplexity": math.exp(nll / n), "mean_nll": nll / n}
    if reference is not None:
        out["mean_kl"] = kl / n
        out["top1_agreement"] = agree / n
    return out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="xllm-perplexity", description="Perplexity of a model over a text file; "
                                                           "with --reference, KL and top-1 agreement.")
    p.add_argument("--weight", required=True, help="model to judge (GGUF, llama2.c .bin, HF directory)")
    p.add_argument("--file", required=True, help="UTF-8 text to score")
    p.add_argument("--reference", help="the reference model (e.g. the F32 original of a quantized file)")
    p.add_argument("--token", help="tokenizer, when the model files have none embedded")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--window", type=positive_int, default=None,
                   help="tokens per scored window (default: the context length)")
    add_kv_type_option(p)     # the judged model's cache; --reference keeps auto
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@cli_entry("xllm-perplexity")
def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .engine import LLM
    try:
        with open(args.file, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{args.file}: not valid UTF-8 (byte {exc.start})") from None
    llm = LLM(args.weight, tokenizer=args.token, threads=args.threads, max_seqs=1, kv_type=args.kv_type)
    ref = None
    if args.reference:
        ref = LLM(args.reference, tokenizer=args.token, threads=args.threads, max_seqs=1)
        if ref.config.vocab_size != llm.config.vocab_size:
            raise UsageError(f"--reference has vocab_size {ref.config.vocab_size}, the model {llm.config.vocab_size}")
    ids = llm.tokenizer.encode(text, bos=True)
    if len(ids) < 2:
        raise UsageError(f"{args.file}: no text to score")
    window = min(args.window or llm.config.max_seq_len, llm.config.max_seq_len,
                 ref.config.max_seq_len if ref else llm.config.max_seq_len)
    if window < 2:
        raise UsageError("--window must be at least 2")
    result = evaluate(llm, ids, window, ref)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity: {result['perplexity']:.4f} over {result['tokens']} tokens (window {window})")
        if ref is not None:
            print(f"mean KL(reference || model): {result['mean_kl']:.6f} nats")
            print(f"top-1 agreement: {100 * result['top1_agreement']:.2f}%")
    return 0


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
