#!/usr/bin/env python3
"""xllm-quant against llama-quantize on a synthetic llama model: types and bytes, tensor by tensor.

    python benchmarks/compare_llama_quantize.py PATH/TO/llama-quantize [--layers 32] [--hidden 288]
        [--heads 8 --kv-heads 2] [--tied] [--types Q4_K_M Q2_K ...] [--pure]

Writes a random F32 llama GGUF (dim 256, a 512-token vocabulary taken from the fixture
tiny256-f32.gguf, the given layers/FFN width/heads) in which some rows of several matrices are
adversarial (zeros, -0.0, constants, one outlier, 1e-30 and 1e5 scales, one non-zero value,
positive only, Cauchy tails ...), quantizes it with both tools for each preset and prints one
line per preset: OK when every tensor has the same type and the same bytes and
general.file_type agrees, else the first differing tensors.  An FFN width that is not a
multiple of 256 (the default 288) exercises llama-quantize's fallback types; with --pure such
rows are refused by xllm-quant (and fall back in llama-quantize), so use --hidden 512 there.
Needs the kquant fixture for its vocabulary (../shared/fixtures/kquant/tiny256-f32.gguf).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "kquant" / "tiny256-f32.gguf"
PRESETS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
           "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "BF16", "F16"]


def adversarial(w: np.ndarray, rng) -> np.ndarray:
    w = w.copy()
    c = w.shape[1]
    w[0] = 0
    w[1] = 0.5
    w[2] = -np.abs(w[2])
    w[3, 5] = 100.0
    w[4] *= 1e-30
    w[5] *= 1e-6
    w[6] *= 1e5
    w[7] = np.tile([1, -1, 0.5, -0.25], c // 4)
    w[8] = 0
    w[8, 17] = 0.3
    w[9] = np.abs(w[9])
    w[10] = -0.0
    w[11, : c // 2] = 0
    w[12] = np.linspace(-1, 1, c)
    w[13] = rng.standard_cauchy(c) * 0.01
    w[14] = np.round(w[14] * 100) / 100
    w[15, ::16] = 3.0
    return w.astype(np.float32)


def write_model(path: str, n_layer: int, hidden: int, n_head: int, n_kv: int, tied: bool) -> None:
    dim, vocab = 256, 512
    head_dim = dim // n_head
    src = GGUFReader(FIXTURE)
    rng = np.random.default_rng(1)

    def rand(r, c, adv=False):
        w = rng.normal(0, 0.05, (r, c)).astype(np.float32)
        return adversarial(w, rng) if adv else w

    w = GGUFWriter(path, "llama")
    for key, field in src.fields.items():
        if key.startswith("tokenizer."):
            w.add_key_value(key, field.contents(), field.types[0],
                            field.types[1] if len(field.types) > 1 else None)
    w.add_name("compare")
    w.add_file_type(0)
    w.add_vocab_size(vocab)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    ones = np.ones(dim, np.float32)
    w.add_tensor("token_embd.weight", rand(vocab, dim, True))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", rand(dim, dim, True))
        w.add_tensor(p + "attn_k.weight", rand(n_kv * head_dim, dim))
        w.add_tensor(p + "attn_v.weight", rand(n_kv * head_dim, dim, True))
        w.add_tensor(p + "attn_output.weight", rand(dim, dim))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", rand(hidden, dim, True))
        w.add_tensor(p + "ffn_up.weight", rand(hidden, dim))
        w.add_tensor(p + "ffn_down.weight", rand(dim, hidden, True))
    w.add_tensor("output_norm.weight", ones)
    if not tied:
        w.add_tensor("output.weight", rand(vocab, dim, True))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def compare(theirs: str, ours: str) -> str:
    a, b = GGUFReader(theirs), GGUFReader(ours)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    bad = []
    for name, t in ta.items():
        u = tb.get(name)
        if u is None:
            bad.append(f"{name} missing")
        elif t.tensor_type != u.tensor_type:
            bad.append(f"{name} {u.tensor_type.name} instead of {t.tensor_type.name}")
        elif np.array(t.data).tobytes() != np.array(u.data).tobytes():
            bad.append(f"{name} {t.tensor_type.name} bytes differ")
    bad += [f"{name} extra" for name in tb if name not in ta]
    fa, fb = (r.fields["general.file_type"].contents() for r in (a, b))
    if fa != fb:
        bad.append(f"general.file_type {fb} instead of {fa}")
    counts = {}
    for t in ta.values():
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return f"OK ({kinds})" if not bad else f"DIFFERENT ({len(bad)}): " + "; ".join(bad[:4])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("llama_quantize")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=288)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--tied", action="store_true", help="no output.weight (token_embd is the classifier)")
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--types", nargs="+", default=PRESETS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "f32.gguf")
        write_model(src, args.layers, args.hidden, args.heads, args.kv_heads, args.tied)
        pure = ["--pure"] if args.pure else []
        for preset in args.types:
            theirs, ours = os.path.join(tmp, "theirs.gguf"), os.path.join(tmp, "ours.gguf")
            lq = subprocess.run([args.llama_quantize, *pure, src, theirs, preset, "2"], capture_output=True, text=True)
            if lq.returncode:
                print(f"{preset:7s} llama-quantize failed: {lq.stderr.strip().splitlines()[-1:]}")
                continue
            xq = subprocess.run([sys.executable, "-m", "quant.cli", "--weight", src, "-o", ours, "--type", preset,
                                 *pure], capture_output=True, text=True, cwd=REPO)
            if xq.returncode:
                print(f"{preset:7s} xllm-quant refused: {xq.stderr.strip()}")
                continue
            print(f"{preset:7s} {compare(theirs, ours)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
