"""Random checkpoints of any family and shape for tests, in memory or as GGUF files."""
import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType
from gguf.quants import quantize

from xllm.config import ModelConfig
from xllm.convert import add_model_metadata
from xllm.formats import Checkpoint, Tensor, F32, F16, Q8_0, Q4_0, layer_tensor_shapes


def random_weights(cfg: ModelConfig, seed=0, scale=0.5):
    """GGUF name -> float32 array; norms around 1, biases ~ N(0, 0.1^2), matrices
    ~ N(0, scale^2 / fan_in); rope_freqs.weight holds the config's llama3 factors."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in layer_tensor_shapes(cfg).items():
        if name == "rope_freqs.weight":
            out[name] = np.asarray(cfg.rope_freq_factors, dtype=np.float32)
        elif name.endswith(".bias"):
            out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (scale * rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    out["token_embd.weight"] *= np.sqrt(cfg.dim)          # embeddings of unit-ish size
    if "position_embd.weight" in out:
        out["position_embd.weight"] *= np.sqrt(cfg.dim) / 2
    return out


def stored(weights, ggml_type):
    """name -> Tensor stored as ggml_type (matrices only; norms stay F32)."""
    tensors = {}
    for name, a in weights.items():
        t = F32 if a.ndim == 1 else ggml_type
        if t == F32:
            data = a
        elif t == F16:
            data = a.astype(np.float16)
        else:
            data = quantize(a, GGMLQuantizationType(t))
        tensors[name] = Tensor(name, t, a.shape, data)
    return tensors


def dequantized64(tensors):
    """name -> float64 array of what the engine actually multiplies by."""
    return {n: t.to_float32().astype(np.float64) for n, t in tensors.items()}


def random_checkpoint(cfg: ModelConfig, ggml_type=F32, seed=0):
    tensors = stored(random_weights(cfg, seed), ggml_type)
    return Checkpoint("<random>", cfg, tensors, None, "memory")


def write_gguf(path, cfg: ModelConfig, tensors, vocab=None):
    """A GGUF of these tensors (cfg's architecture) (and a vocabulary) for file-level tests."""
    w = GGUFWriter(str(path), cfg.arch)
    add_model_metadata(w, cfg, "test")
    if vocab is not None:
        for key, value in vocab.gguf_fields().items():
            if isinstance(value, str):
                w.add_string(key, value)
            elif isinstance(value, bool):
                w.add_bool(key, value)
            elif isinstance(value, int):
                w.add_uint32(key, value)
            else:
                w.add_array(key, list(value))
    for name, t in tensors.items():
        if t.ggml_type in (Q8_0, Q4_0):
            w.add_tensor(name, np.asarray(t.data), raw_dtype=GGMLQuantizationType(t.ggml_type))
        else:
            w.add_tensor(name, np.asarray(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
