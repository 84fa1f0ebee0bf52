"""The cost model: bytes each operator must move and FLOPs it must do per step, and the
per-operator roofline table.
"""
from __future__ import annotations

from typing import Dict, List

from ..formats.types import block_layout, is_block_quantized
from .limits import GB, attention_peak, kernel_peak


MATMUL_OPS = ("qkv_proj", "attn_out_proj", "ffn_gate_up", "ffn_down", "classifier")


def _value_bytes(ggml_type: int) -> float:
    values, nbytes = block_layout(ggml_type)
    return nbytes / values


def kv_value_bytes(llm) -> float:
    """Bytes one cached key or value takes in the model's KV cache type (q8_0: 34/32)."""
    cfg = llm.config
    return llm.model.kv.bytes_per_token / (2 * cfg.n_layers * cfg.kv_dim)


class CostModel:
    """Bytes each operator must move and FLOPs it must do for a step (see module doc)."""

    def __init__(self, ckpt, kv_value_bytes: float = 4.0):
        cfg = self.cfg = ckpt.config
        self.kv_value_bytes = kv_value_bytes          # bytes of one cached key or value (the KV type)
        t = ckpt.tensors

        def nbytes(name):
            return int(t[name].data.nbytes)
        L = cfg.n_layers
        qkv = ("attn_qkv",) if cfg.fused_qkv else ("attn_q", "attn_k", "attn_v")
        up = ("ffn_gate", "ffn_up") if cfg.activation == "swiglu" else ("ffn_up",)     # gpt2: no gate
        self.n_up = len(up)
        self.w = {
            "qkv_proj": sum(nbytes(f"blk.{i}.{x}.weight") for i in range(L) for x in qkv),
            "attn_out_proj": sum(nbytes(f"blk.{i}.attn_output.weight") for i in range(L)),
            "ffn_gate_up": sum(nbytes(f"blk.{i}.{x}.weight") for i in range(L) for x in up),
            "ffn_down": sum(nbytes(f"blk.{i}.ffn_down.weight") for i in range(L)),
            "classifier": nbytes("output.weight" if "output.weight" in t else "token_embd.weight"),
        }
        self.types = {op: t[n].ggml_type for op, n in (
            ("qkv_proj", f"blk.0.{qkv[0]}.weight"), ("attn_out_proj", "blk.0.attn_output.weight"),
            ("ffn_gate_up", f"blk.0.{up[0]}.weight"), ("ffn_down", "blk.0.ffn_down.weight"),
            ("classifier", "output.weight" if "output.weight" in t else "token_embd.weight"))}
        self.embed_row_bytes = _value_bytes(t["token_embd.weight"].ggml_type) * cfg.dim
        self.norm_bytes = 4 * cfg.dim

    def decode_weight_bytes(self) -> float:
        """Weight bytes one decode token streams: every matrix once, one embedding row, norms."""
        return sum(self.w.values()) + self.embed_row_bytes + self.norm_bytes * (2 * self.cfg.n_layers + 1)

    def step(self, chunks) -> Dict[str, tuple]:
        """{op: (bytes, flops)} of one Model.step over `chunks` (seq_id, tokens, start_pos, logits)."""
        c = self.cfg
        L, d, h, q, kv, hd = c.n_layers, c.dim, c.hidden_dim, c.q_dim, c.kv_dim, c.head_dim
        T = sum(len(ch.tokens) for ch in chunks)
        n_out = sum(len(ch.tokens) if ch.logits == "all" else 1 if ch.logits == "last" else 0
                    for ch in chunks)
        # attended positions summed over tokens: token at position p attends p + 1 positions
        att = sum(len(ch.tokens) * ch.start_pos + len(ch.tokens) * (len(ch.tokens) + 1) // 2
                  for ch in chunks)
        f4 = 4
        out = {
            "embed": (T * (self.embed_row_bytes + f4 * d), 0),
            "rmsnorm": (L * 2 * (2 * f4 * T * d + self.norm_bytes) + n_out * 2 * f4 * d + self.norm_bytes,
                        (L * 2 * T + n_out) * 4 * d),
            "qkv_proj": (self.w["qkv_proj"] + L * f4 * T * (d + q + 2 * kv), L * 2 * T * d * (q + 2 * kv)),
            "rope": (L * 2 * f4 * T * (q + kv), L * 3 * T * (q + kv)),
            "kv_write": (L * 2 * (f4 + self.kv_value_bytes) * T * kv, 0),
            "attention": (L * (2 * self.kv_value_bytes * att * kv + 2 * f4 * T * q),
                          L * att * c.n_heads * (4 * hd + 5)),
            "attn_out_proj": (self.w["attn_out_proj"] + L * f4 * T * (q + d), L * 2 * T * q * d),
            "residual": (L * 2 * 3 * f4 * T * d, L * 2 * T * d),
            "ffn_gate_up": (self.w["ffn_gate_up"] + L * f4 * T * (d + self.n_up * h), L * self.n_up * 2 * T * d * h),
            "swiglu": (L * 3 * f4 * T * h, L * 6 * T * h),
            "ffn_down": (self.w["ffn_down"] + L * f4 * T * (h + d), L * 2 * T * h * d),
            "classifier": ((self.w["classifier"] + f4 * n_out * (d + c.vocab_size)) if n_out else 0,
                           2 * n_out * d * c.vocab_size),
        }
        return out


def op_table(op_seconds: Dict[str, float], costs: Dict[str, list], limits: dict, types: Dict[str, int],
             steps: int = 1, tokens: int = 1, out_rows: int = 1) -> List[dict]:
    """Rows of the per-operator table: time share, bytes, FLOPs, achieved GB/s and GFLOP/s,
    arithmetic intensity, memory/compute bound by the roofline of `limits`, and the fraction
    of that roofline reached.  Each matmul is held to the peak of the instruction its kernel
    runs for its weight type at `tokens` tokens per step (kernel_peak); the classifier at the
    `out_rows` rows of logits a step computes (1 in a prefill, every token in a decode batch)."""
    total = sum(op_seconds.values()) or float("nan")
    bw = limits["read_gbps"] * GB
    rows = []
    for op, secs in op_seconds.items():
        nbytes, flops = costs.get(op, (0, 0))
        if secs <= 0 and nbytes == 0 and flops == 0:
            continue
        quant = op in MATMUL_OPS and op in types and is_block_quantized(types[op])
        if op == "attention":
            peak_g, peak_name = attention_peak(limits)
        else:
            peak_g, peak_name = kernel_peak(limits, types[op] if op in MATMUL_OPS and op in types else None,
                                            tokens if op != "classifier" else out_rows)
        peak = peak_g * GB
        intensity = flops / nbytes if nbytes else float("inf")
        roof = min(peak, intensity * bw) if flops else None
        gbps = nbytes / secs / GB if secs > 0 else float("nan")
        gflops = flops / secs / GB if secs > 0 else float("nan")
        if flops:
            bound = "memory" if intensity * bw < peak else "compute"
            frac = (flops / secs) / roof if secs > 0 else float("nan")
        else:
            bound = "memory"
            frac = (nbytes / secs) / bw if secs > 0 else float("nan")
        rows.append({
            "op": op, "seconds": secs / steps, "share": secs / total, "bytes": nbytes / steps,
            "flops": flops / steps, "gbps": gbps, "gflops": gflops, "intensity": intensity,
            "bound": bound, "roof": "int8" if quant else "fp32", "peak": peak_name, "roof_fraction": frac,
        })
    return rows
