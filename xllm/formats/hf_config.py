"""config.json of a Hugging Face checkpoint -> ModelConfig, and the tensor names per family.

Families: LlamaForCausalLM (rope_scaling none / linear / llama3, attention_bias, mlp_bias),
Qwen2ForCausalLM (llama plus q/k/v biases, half-split RoPE kept as stored) and GPT2LMHeadModel
(LayerNorm, GELU tanh, learned positions, fused c_attn; Conv1D weights stored transposed).
Everything else is refused by name, with the supported values, before any tensor is read.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from ..config import ModelConfig, llama3_freq_factors

CONFIG_FILE = "config.json"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "GPT2LMHeadModel": "gpt2"}
ROPE_TYPES = ("default", "linear", "llama3")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")      # GPT-2's GELU, the tanh form

# GGUF name (relative to blk.N. for per-layer names) -> HF name, per family; `{p}` is the prefix
LLAMA_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LLAMA_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
               "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GPT2_GLOBAL = {"token_embd.weight": "{p}wte.weight", "position_embd.weight": "{p}wpe.weight",
               "output_norm.weight": "{p}ln_f.weight", "output_norm.bias": "{p}ln_f.bias",
               "output.weight": "lm_head.weight"}
GPT2_LAYER = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
              "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
# Buffers exporters save next to the weights; recomputed at run time (llama.cpp skips them too).
IGNORED = re.compile(r"(model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
                     r"|(transformer\.)?h\.\d+\.attn\.(masked_)?bias)")


def load_json(path: str, name: str) -> dict:
    file = os.path.join(path, name)
    try:
        with open(file, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing {name} (a Hugging Face model directory needs it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {name} holds a {type(value).__name__}, expected a JSON object")
    return value


@dataclass
class HFConfig:
    """What config.json says, checked: the ModelConfig fields and the special ids."""
    family: str                                # llama | qwen2 | gpt2
    fields: dict                               # ModelConfig keyword arguments
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple = ()
    raw: dict = field(default_factory=dict)


class _Reader:
    """Typed access to config.json's keys, every error naming the directory and the key."""

    def __init__(self, path, raw):
        self.path, self.raw = path, raw

    def bad(self, key, expected, value=...):
        value = self.raw.get(key) if value is ... else value
        raise ValueError(f"{self.path}: {CONFIG_FILE}: {key} = {value!r}, {expected}")

    def integer(self, key, default=None):
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise ValueError(f"{self.path}: {CONFIG_FILE}: missing {key!r}")
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.bad(key, "expected a positive integer")
        return value

    def number(self, key, default, value=...):
        value = self.raw.get(key, default) if value is ... else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.bad(key, "expected a number", value)
        return float(value)

    def flag(self, key, default):
        value = self.raw.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, bool):
            self.bad(key, "expected true or false")
        return value

    def token_ids(self, key):
        value = self.raw.get(key)
        values = value if isinstance(value, list) else [] if value is None else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                self.bad(key, "expected a token id or a list of token ids")
        return tuple(values)

    def refuse_unless(self, key, allowed, what):
        value = self.raw.get(key)
        if value is not None and value not in allowed:
            self.bad(key, f"expected {' or '.join(repr(a) for a in allowed)} ({what} is not supported)")


def _family(r: _Reader) -> str:
    archs = r.raw.get("architectures")
    supported = ", ".join(ARCHITECTURES)
    if archs is not None:
        found = [a for a in archs if a in ARCHITECTURES] if isinstance(archs, list) else []
        if not found:
            r.bad("architectures", f"expected one of {supported} (not supported)")
        return ARCHITECTURES[found[0]]
    kinds = {v: v for v in ARCHITECTURES.values()}
    if r.raw.get("model_type") not in kinds:
        r.bad("model_type", f"expected one of {', '.join(kinds)} (no 'architectures' given; "
                            f"supported: {supported})")
    return kinds[r.raw["model_type"]]


def _rope(r: _Reader, head_dim: int) -> dict:
    """rope_theta and scaling from rope_scaling (transformers < 5) or rope_parameters (>= 5)."""
    theta = r.number("rope_theta", 10000.0)
    out = {}
    for key in ("rope_scaling", "rope_parameters"):
        p = r.raw.get(key)
        if p is None:
            continue
        if not isinstance(p, dict):
            r.bad(key, "expected null or an object")
        if "rope_theta" in p:
            theta = r.number(f"{key}.rope_theta", None, p["rope_theta"])
        kind = p.get("rope_type", p.get("type", "default"))
        if kind not in ROPE_TYPES:
            r.bad(key, f"rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if kind == "default":
            continue
        factor = r.number(f"{key}.factor", None, p.get("factor"))
        if factor <= 0:
            r.bad(f"{key}.factor", "expected a positive number", factor)
        if kind == "linear":
            out = dict(rope_scaling="linear", rope_factor=factor)
        else:
            low = r.number(f"{key}.low_freq_factor", None, p.get("low_freq_factor", 1.0))
            high = r.number(f"{key}.high_freq_factor", None, p.get("high_freq_factor", 4.0))
            ctx = p.get("original_max_position_embeddings", 8192)
            if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx <= 0:
                r.bad(f"{key}.original_max_position_embeddings", "expected a positive integer", ctx)
            if high <= low:
                r.bad(f"{key}.high_freq_factor", f"expected more than low_freq_factor = {low}", high)
            out = dict(rope_scaling="llama3", rope_freq_factors=llama3_freq_factors(
                head_dim, theta, factor, low, high, ctx))
    partial = r.raw.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        r.bad("partial_rotary_factor", "expected 1.0 (partial rotary embeddings are not supported)")
    return {"rope_theta": theta, **out}


def _llama_like(r: _Reader, family: str) -> dict:
    hidden = r.integer("hidden_size")
    heads = r.integer("num_attention_heads")
    if r.raw.get("head_dim") is None:
        if hidden % heads:
            r.bad("hidden_size", f"not divisible by num_attention_heads = {heads} and no head_dim given")
        head_dim = hidden // heads
    else:
        head_dim = r.integer("head_dim")
    r.refuse_unless("hidden_act", ("silu",), "an FFN other than SiLU-gated")
    if family == "qwen2":
        if r.flag("use_sliding_window", False):
            r.bad("use_sliding_window", "expected false (sliding-window attention is not supported)")
        layer_types = r.raw.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            r.bad("layer_types", "expected only 'full_attention' (sliding-window attention is not supported)")
        qkv_bias, out_bias, ffn_bias = True, False, False
    else:
        attention_bias = r.flag("attention_bias", False)
        qkv_bias, out_bias, ffn_bias = attention_bias, attention_bias, r.flag("mlp_bias", False)
    return dict(
        dim=hidden, hidden_dim=r.integer("intermediate_size"), n_layers=r.integer("num_hidden_layers"),
        n_heads=heads, n_kv_heads=r.integer("num_key_value_heads", heads), head_dim=head_dim,
        vocab_size=r.integer("vocab_size"),
        max_seq_len=r.integer("max_position_embeddings", 2048),           # LlamaConfig's default
        norm_eps=r.number("rms_norm_eps", 1e-6),                           # LlamaConfig's default
        tied_embeddings=r.flag("tie_word_embeddings", False),
        arch=family, norm="rms", activation="swiglu", position="rope",
        rope_style="neox" if family == "qwen2" else "adjacent",
        qkv_bias=qkv_bias, out_bias=out_bias, ffn_bias=ffn_bias, **_rope(r, head_dim))


def _gpt2(r: _Reader) -> dict:
    dim = r.integer("n_embd")
    heads = r.integer("n_head")
    if dim % heads:
        r.bad("n_embd", f"not divisible by n_head = {heads}")
    r.refuse_unless("activation_function", GELU_TANH, "an activation other than GELU's tanh form")
    for key, want, what in (("scale_attn_weights", True, "unscaled attention"),
                            ("scale_attn_by_inverse_layer_idx", False, "layer-scaled attention"),
                            ("add_cross_attention", False, "cross-attention")):
        if r.flag(key, want) != want:
            r.bad(key, f"expected {str(want).lower()} ({what} is not supported)")
    inner = r.raw.get("n_inner")
    return dict(
        dim=dim, hidden_dim=4 * dim if inner is None else r.integer("n_inner"),
        n_layers=r.integer("n_layer"), n_heads=heads, n_kv_heads=heads, head_dim=dim // heads,
        vocab_size=r.integer("vocab_size"), max_seq_len=r.integer("n_positions", 1024),
        norm_eps=r.number("layer_norm_epsilon", 1e-5),
        tied_embeddings=r.flag("tie_word_embeddings", True),               # GPT2Config's default
        arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
        qkv_bias=True, out_bias=True, ffn_bias=True, fused_qkv=True)


def read_hf_config(path: str) -> HFConfig:
    """Parse and check config.json; refuse what the engine does not implement, by name."""
    raw = load_json(path, CONFIG_FILE)
    r = _Reader(path, raw)
    family = _family(r)
    fields = _gpt2(r) if family == "gpt2" else _llama_like(r, family)
    bos = r.token_ids("bos_token_id")
    return HFConfig(family, fields, bos[0] if bos else None, r.token_ids("eos_token_id"), raw)


def tensor_names(cfg: ModelConfig, gguf_names, prefix: str = "") -> dict:
    """GGUF name -> HF name for the tensors `gguf_names` of a model of `cfg`'s family
    (rope_freqs.weight has no HF tensor: it comes from the config)."""
    glob, layer = (GPT2_GLOBAL, GPT2_LAYER) if cfg.arch == "gpt2" else (LLAMA_GLOBAL, LLAMA_LAYER)
    layers = "{p}h." if cfg.arch == "gpt2" else "model.layers."
    out = {}
    for name in gguf_names:
        if name in glob:
            out[name] = glob[name].format(p=prefix)
        elif name.startswith("blk."):
            _, i, base, kind = name.split(".")
            out[name] = f"{layers.format(p=prefix)}{i}.{layer[base]}.{kind}"
    return out


def transposed(cfg: ModelConfig, gguf_name: str) -> bool:
    """GPT-2's Conv1D weights (c_attn, c_proj, c_fc) are stored (in, out): transpose on import."""
    return (cfg.arch == "gpt2" and gguf_name.startswith("blk.") and gguf_name.endswith(".weight")
            and gguf_name.split(".")[2] in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"))


def permuted_heads(cfg: ModelConfig, gguf_name: str) -> Optional[int]:
    """Heads to un-permute q/k rows by (llama only: HF's half-split rotation -> adjacent pairs;
    qwen2 keeps the stored order and rotates halves, as llama.cpp does), else None."""
    if cfg.rope_style != "adjacent" or cfg.position != "rope" or not gguf_name.startswith("blk."):
        return None
    base = gguf_name.split(".")[2]
    return {"attn_q": cfg.n_heads, "attn_k": cfg.n_kv_heads}.get(base)
