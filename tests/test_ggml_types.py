"""The GGUF type table: names, block layouts, and refusal of types the kernels cannot run."""
import numpy as np
import pytest
from gguf import GGUFWriter, GGMLQuantizationType

from xllm.formats import types as ggml_types
from xllm.formats import open_checkpoint


def test_names_and_layouts_follow_gguf():
    assert ggml_types.type_name(ggml_types.Q4_K) == "Q4_K"
    assert ggml_types.type_name(16) == "IQ2_XXS"
    assert ggml_types.type_name(9999) == "type 9999"
    assert ggml_types.block_layout(ggml_types.Q6_K) == (256, 210)
    assert ggml_types.row_bytes(ggml_types.Q8_0, 64) == 68
    assert ggml_types.row_bytes(ggml_types.F16, 7) == 14
    with pytest.raises(ValueError, match="not a multiple of 256 for Q4_K"):
        ggml_types.row_bytes(ggml_types.Q4_K, 320)
    with pytest.raises(ValueError, match="unknown tensor type 9999"):
        ggml_types.block_layout(9999)


def test_unrunnable_type_is_refused_by_name(tmp_path):
    """A tensor type the kernels cannot run is named (IQ2_XXS, not 16) with the supported list."""
    path = tmp_path / "iq2.gguf"
    w = GGUFWriter(str(path), "llama")
    dim, hidden, vocab = 256, 256, 8
    w.add_context_length(16)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_block_count(1)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    w.add_tensor("token_embd.weight", f(vocab, dim))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    for n in ("attn_norm", "ffn_norm"):
        w.add_tensor(f"blk.0.{n}.weight", np.ones(dim, np.float32))
    for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        w.add_tensor(f"blk.0.{n}.weight", f(dim, dim))
    # IQ2_XXS: 66 bytes per 256 values; the bytes are never interpreted, only the type is.
    w.add_tensor("output.weight", np.zeros((vocab, dim // 256 * 66), np.uint8),
                 raw_dtype=GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError) as e:
        open_checkpoint(path)
    msg = str(e.value)
    assert "'output.weight' has type IQ2_XXS" in msg and "supported:" in msg and "Q8_0" in msg
