"""Build Hugging Face checkpoint directories for tests.

Llama directories by hand (numpy + safetensors, no torch; below), and directories of every
family made by transformers itself (`make_transformers_dir`, at the end).

`make_hf_dir` writes config.json, the tensors (one model.safetensors, or shards with
model.safetensors.index.json) in F32/F16/BF16, and a sentencepiece tokenizer.model, and returns
the config and the weights as stored (rounded to the file dtype, float64) for the reference.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
TOKENIZERS = {"tok512": MODELS / "tok512.model", "llama2": MODELS / "tokenizer.model"}


@dataclass
class Geometry:
    """A small llama config; the names are config.json's."""
    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = None             # None: not written, hidden_size // heads
    vocab_size: int = 512
    max_position_embeddings: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False

    def config(self) -> dict:
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "rope_scaling": None,
            "torch_dtype": "float32",
            "initializer_range": 0.02,
        }
        for k, v in self.__dict__.items():
            if v is not None:
                cfg[k] = v
        return cfg


# The geometries the issue asks for; small enough that a forward takes milliseconds.
GEOMETRIES = {
    "gqa": Geometry(),
    "mha": Geometry(num_attention_heads=4, num_key_value_heads=4, rope_theta=5e5, rms_norm_eps=1e-6,
                    tie_word_embeddings=True),
    # SmolLM-135M: hidden 576, 9 heads of 64, 3 kv heads, tied; fewer layers and a narrower FFN.
    "smollm": Geometry(hidden_size=576, intermediate_size=384, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    # head_dim given and != hidden/heads (q width 64 from a 48-wide model), as HF allows.
    "wide_heads": Geometry(hidden_size=48, intermediate_size=96, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, rope_theta=5e5, rms_norm_eps=1e-6),
}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


# safetensors dtype -> (numpy dtype written, encode, decode to the exact stored value)
_CODECS = {
    "F32": (lambda a: a.astype(np.float32), lambda a: a.astype(np.float64)),
    "F16": (lambda a: a.astype(np.float16), lambda a: a.astype(np.float64)),
    "BF16": (bf16_bits, bf16_to_f64),
}


def write_safetensors(path, tensors: dict, dtypes: dict) -> None:
    """Write a safetensors file by the spec (8-byte header length, JSON header, data).

    Written by hand because safetensors' numpy API cannot express bfloat16; tests read the
    files back through safetensors itself, and transformers reads them in the oracle test.
    """
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtypes[name], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)          # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def random_weights(g: Geometry, seed: int = 0) -> dict:
    """HF name -> float32 weights scaled so activations stay O(1) through the layers."""
    rng = np.random.default_rng(seed)
    d, hid, hd = g.hidden_size, g.intermediate_size, g.head_dim or g.hidden_size // g.num_attention_heads
    q, kv = g.num_attention_heads * hd, g.num_key_value_heads * hd

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((g.vocab_size, d)).astype(np.float32)}
    for i in range(g.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(q, d)
        w[p + "self_attn.k_proj.weight"] = mat(kv, d)
        w[p + "self_attn.v_proj.weight"] = mat(kv, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, q)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = mat(hid, d)
        w[p + "mlp.up_proj.weight"] = mat(hid, d)
        w[p + "mlp.down_proj.weight"] = mat(d, hid)
    w["model.norm.weight"] = norm()
    if not g.tie_word_embeddings:
        w["lm_head.weight"] = mat(g.vocab_size, d)
    return w


@dataclass
class HFModel:
    path: Path
    config: dict                 # as written to config.json
    weights: dict                # HF name -> float64, exactly the values stored
    dtype: str
    files: list = field(default_factory=list)


def make_hf_dir(root, geometry="gqa", *, dtype="F32", shards=1, seed=0, tokenizer="tok512",
                config_overrides=None, weights=None, name=None, **geometry_overrides) -> HFModel:
    """Write an HF llama directory under `root`; `geometry` is a GEOMETRIES key or a Geometry.

    dtype is one safetensors dtype for every tensor, or a callable name -> dtype for mixed files.
    `weights` (HF name -> float32) replaces the random ones, e.g. to add or drop a tensor.
    """
    g = GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    if geometry_overrides:
        g = Geometry(**{**g.__dict__, **geometry_overrides})
    path = Path(root) / (name or f"hf-{geometry if isinstance(geometry, str) else 'custom'}-{dtype}-{shards}")
    path.mkdir(parents=True)
    config = g.config()
    config.update(config_overrides or {})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        shutil.copy(TOKENIZERS[tokenizer], path / "tokenizer.model")

    raw = random_weights(g, seed) if weights is None else weights
    dtypes = {n: (dtype(n) if callable(dtype) else dtype) for n in raw}
    encoded = {n: _CODECS[dtypes[n]][0](a) for n, a in raw.items()}
    stored = {n: _CODECS[dtypes[n]][1](a) for n, a in encoded.items()}

    names = list(encoded)
    files = []
    if shards == 1:
        write_safetensors(path / "model.safetensors", encoded, dtypes)
        files.append("model.safetensors")
    else:
        weight_map, total = {}, 0
        for s, chunk in enumerate(np.array_split(np.arange(len(names)), shards)):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {names[j]: encoded[names[j]] for j in chunk}
            write_safetensors(path / file, part, dtypes)
            weight_map.update({n: file for n in part})
            total += sum(a.nbytes for a in part.values())
            files.append(file)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return HFModel(path, config, stored, dtype if isinstance(dtype, str) else "mixed", files)


def write_config(model: HFModel, **changes) -> None:
    """Rewrite config.json with `changes` (a value of ... deletes the key)."""
    cfg = dict(model.config)
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (model.path / "config.json").write_text(json.dumps(cfg, indent=2))
    model.config = cfg


# ----------------------------------------------------------------------------- transformers-made directories

# name -> (transformers class, config keywords): the families and the cases the issue asks for.
# Every vocabulary is tok512's (512 ids, bos 1, eos 2) so the directories carry a tokenizer.model.
_COMMON = dict(vocab_size=512, bos_token_id=1, eos_token_id=2)
_LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=96, rms_norm_eps=1e-5, **_COMMON)
FAMILY_CASES = {
    "llama-gqa": ("LlamaForCausalLM", dict(_LLAMA, num_attention_heads=8)),
    "llama-mha-tied": ("LlamaForCausalLM", dict(_LLAMA, num_key_value_heads=4, tie_word_embeddings=True,
                                                rope_theta=5e5)),
    # original context 64: with head_dim 16 the pairs fall in all three bands of the scaling
    "llama3-rope": ("LlamaForCausalLM", dict(_LLAMA, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "llama-linear-rope": ("LlamaForCausalLM", dict(_LLAMA, rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "llama-biases": ("LlamaForCausalLM", dict(_LLAMA, attention_bias=True, mlp_bias=True)),
    "qwen2": ("Qwen2ForCausalLM", dict(_LLAMA, num_attention_heads=8, rope_theta=1e6)),
    "qwen2-tied-mha": ("Qwen2ForCausalLM", dict(_LLAMA, num_key_value_heads=4, tie_word_embeddings=True)),
    # n_positions smaller than the vocabulary: position and token ids must not be mixed up
    "gpt2": ("GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=48, **_COMMON)),
    "gpt2-untied": ("GPT2LMHeadModel", dict(n_embd=48, n_layer=2, n_head=3, n_positions=40, n_inner=80,
                                            tie_word_embeddings=False, layer_norm_epsilon=1e-6, **_COMMON)),
}
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_CONV1D = re.compile(r".*\.(c_attn|c_proj|c_fc)\.weight")


def make_transformers_dir(root, case: str, dtype: str = "F32", seed: int = 0, tokenizer: bool = True,
                          **config) -> Path:
    """A model of FAMILY_CASES[case] (config keywords overridden by `config`) built by
    transformers with random weights of O(1) activations, saved with save_pretrained
    (safetensors, `dtype`), plus tok512's tokenizer.model unless `tokenizer` is false."""
    import torch
    import transformers
    cls_name, kwargs = FAMILY_CASES[case]
    kwargs = {**kwargs, **config}
    cls = getattr(transformers, cls_name)
    config_cls = cls_name.replace("ForCausalLM", "Config").replace("LMHeadModel", "Config")
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:         # norm weights around 1, biases around 0
                is_norm = re.search(r"norm|ln_", name) and name.endswith("weight")
                p.copy_(0.1 * torch.randn_like(p) + (1.0 if is_norm else 0.0))
            elif re.search(r"embed_tokens|wte", name):
                p.normal_(0.0, 1.0)
            elif "wpe" in name:
                p.normal_(0.0, 0.5)
            else:
                fan_in = p.shape[0] if _CONV1D.fullmatch(name) else p.shape[1]
                p.normal_(0.0, fan_in ** -0.5)
    model = model.to(getattr(torch, _TORCH_DTYPES[dtype]))
    path = Path(root) / f"{case}-{dtype}"
    model.save_pretrained(str(path))
    if tokenizer:
        shutil.copy(TOKENIZERS["tok512"], path / "tokenizer.model")
    return path


def transformers_logits(path, ids):
    """The directory's model from transformers in float32: logits float64 [len(ids), vocab]."""
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


def transformers_greedy(path, ids, n):
    """n greedy tokens after `ids` from transformers (float32, whole prefix recomputed)."""
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]
