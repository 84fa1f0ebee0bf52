"""llama-quantize's presets for llama models: which type each tensor gets.

A port of src/llama-quant.cpp (llama.cpp 0c1e570) for llama-architecture models without
experts and without an importance matrix: `llama_ftype_get_default_type` (the preset's base
type), `llama_tensor_get_type_impl` (the mix: which attn_v / ffn_down / attn_output get more
bits, the classifier's type) and `tensor_type_fallback` (rows that are not a multiple of the
type's block).  `--pure` skips the mix, as llama-quantize's does, but keeps the fallback;
xllm-quant refuses a pure file the fallback would change (see `plan_preset`).

llama-quantize visits tensors in its loader's order (layer number first, tensors outside
layers before all layers, then by name); the counters i_attention_wv and i_ffn_down that
choose the layers given more bits count in that order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

T = GGMLQuantizationType
F32, F16, BF16 = int(T.F32), int(T.F16), int(T.BF16)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = int(T.Q4_0), int(T.Q4_1), int(T.Q5_0), int(T.Q5_1), int(T.Q8_0)
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = int(T.Q2_K), int(T.Q3_K), int(T.Q4_K), int(T.Q5_K), int(T.Q6_K)
IQ4_NL = int(T.IQ4_NL)


@dataclass(frozen=True)
class Preset:
    name: str           # llama-quantize's name (Q4_K_M)
    file_type: int      # general.file_type (llama_ftype)
    base_type: int      # llama_ftype_get_default_type


PRESETS = {p.name: p for p in [
    Preset("Q2_K", 10, Q2_K), Preset("Q3_K_S", 11, Q3_K), Preset("Q3_K_M", 12, Q3_K),
    Preset("Q3_K_L", 13, Q3_K), Preset("Q4_K_S", 14, Q4_K), Preset("Q4_K_M", 15, Q4_K),
    Preset("Q5_K_S", 16, Q5_K), Preset("Q5_K_M", 17, Q5_K), Preset("Q6_K", 18, Q6_K),
    Preset("Q8_0", 7, Q8_0), Preset("Q4_0", 2, Q4_0), Preset("Q4_1", 3, Q4_1),
    Preset("Q5_0", 8, Q5_0), Preset("Q5_1", 9, Q5_1), Preset("IQ4_NL", 25, IQ4_NL),
    Preset("BF16", 32, BF16), Preset("F16", 1, F16), Preset("F32", 0, F32),
]}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}      # as llama-quantize's
def preset_names() -> list:
    return list(PRESETS) + list(ALIASES)


def find_preset(name: str) -> Preset:
    """The preset called `name` (case-insensitive, aliases included); ValueError listing them."""
    key = str(name).upper()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown quantization type {name!r}, expected one of "
                         f"{', '.join(preset_names())}")
    return PRESETS[key]


# general.file_type of a file whose matrices are all one type: llama-quantize's for
# `--pure TYPE` (Q3_K, Q4_K, Q5_K name the _M presets).
PURE_FILE_TYPE = {p.base_type: find_preset(T(p.base_type).name).file_type for p in PRESETS.values()}


def block_size(ggml_type: int) -> int:
    return GGML_QUANT_SIZES[T(ggml_type)][0]


def is_quantized(ggml_type: int) -> bool:
    """ggml_is_quantized: the block types (F32, F16, BF16 are not)."""
    return ggml_type not in (F32, F16, BF16)


# ----------------------------------------------------------------------------- the mix

def category(name: str) -> str:
    """tensor_get_category: token_embd, output, attn_v (also attn_qkv, attn_kv_b), attn_k,
    attn_q, attn_output, ffn_up, ffn_gate, ffn_down or other."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                        ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                        ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                        ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if needle in name:
            return cat
    return "other"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def allows_quantization(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization for llama tensors: matrices named *weight, no norms."""
    return n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name


def loader_order(names) -> list:
    """llama_model_loader's weights_map order: by layer number (-1 outside layers), then name."""
    def key(n):
        m = re.match(r"blk\.(\d+)\.", n)
        return (int(m.group(1)) if m else -1, n)
    return sorted(names, key=key)


@dataclass
class ModelShape:
    """What the rules read from the model: layers, heads (n_gqa = n_head // n_head_kv)."""
    n_layer: int
    n_head: int
    n_head_kv: int


class _Mix:
    """llama_tensor_get_type_impl's state (quantize_state_impl) for one model and preset."""

    def __init__(self, preset: Preset, model: ModelShape, names):
        self.ftype = preset.name
        self.model = model
        self.n_attention_wv = sum(category(n) == "attn_v" for n in names)
        self.tied = "output.weight" not in names
        self.i_attention_wv = 0
        self.i_ffn_down = 0

    def choose(self, name: str, cols: int, new_type: int) -> int:
        f, m = self.ftype, self.model
        cat = category(name)
        gqa = m.n_head // max(1, m.n_head_kv)
        if cat == "output" or (self.tied and cat == "token_embd"):
            if cols % block_size(new_type):
                return Q8_0
            return new_type if new_type == Q8_0 else Q6_K
        if cat == "attn_v":
            i, n = self.i_attention_wv, self.n_attention_wv
            if f == "Q2_K":
                new_type = Q4_K if gqa >= 4 else Q3_K
            elif f == "Q3_K_M":
                new_type = Q5_K if i < 2 else Q4_K
            elif f == "Q3_K_L":
                new_type = Q5_K
            elif f == "IQ4_NL" and gqa >= 4:
                new_type = Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
                new_type = Q6_K
            elif f == "Q4_K_S" and i < 4:
                new_type = Q5_K
            if m.n_layer == 80 and m.n_head != m.n_head_kv and new_type in (Q3_K, Q4_K):
                new_type = Q5_K                         # LLM_TYPE_70B: 8 heads share attn_v
            self.i_attention_wv += 1
        elif cat == "ffn_down":
            i, n = self.i_ffn_down, m.n_layer
            if f == "Q2_K":
                new_type = Q3_K
            elif f == "Q3_K_M":
                new_type = Q5_K if i < n // 16 else Q4_K
            elif f == "Q3_K_L":
                new_type = Q5_K
            elif f == "Q4_K_M":
                if use_more_bits(i, n):
                    new_type = Q6_K
            elif i < n // 8 and f == "IQ4_NL":
                new_type = Q5_K
            elif f == "Q5_K_M" and use_more_bits(i, n):
                new_type = Q6_K
            elif f == "Q4_K_S" and i < n // 8:
                new_type = Q5_K
            self.i_ffn_down += 1
        elif cat == "attn_output":
            new_type = {"Q2_K": Q3_K, "Q3_K_M": Q4_K, "Q3_K_L": Q5_K}.get(f, new_type)
        return new_type


def fallback_type(target: int, cols: int) -> int:
    """tensor_type_fallback: the type a row of `cols` values gets instead of `target` when it
    is not a multiple of target's block (F16 when even the fallback's block does not fit)."""
    if cols % block_size(target) == 0:
        return target
    demoted = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}.get(target, target)
    return demoted if cols % block_size(demoted) == 0 else F16


# ----------------------------------------------------------------------------- the plan

def plan_preset(tensors: dict, preset: Preset, model: ModelShape, pure: bool = False) -> dict:
    """GGUF name -> type for quantizing with `preset`, as llama-quantize chooses.

    tensors: name -> shape (numpy order, rows first: a matrix is (rows, cols)).  Tensors that
    are not quantized (1-D, norms) map to None: the caller keeps them (F32).  With pure=True,
    a matrix whose rows do not divide the base type's block is a ValueError instead of a
    fallback, since the file would not be pure."""
    names = loader_order(tensors)
    mix = _Mix(preset, model, names)
    plan = {}
    for name in names:
        shape = tuple(tensors[name])
        if not allows_quantization(name, len(shape)):
            plan[name] = None
            continue
        cols = shape[-1]
        new_type = preset.base_type
        if is_quantized(new_type):
            if pure:
                if cols % block_size(new_type):
                    raise ValueError(f"tensor {name!r} has rows of {cols} values, not a multiple of "
                                     f"{block_size(new_type)}: it cannot be {T(new_type).name} in a "
                                     f"--pure file (drop --pure to let it fall back to "
                                     f"{T(fallback_type(new_type, cols)).name})")
            else:
                new_type = mix.choose(name, cols, new_type)
            new_type = fallback_type(new_type, cols)
        plan[name] = new_type
    return plan
