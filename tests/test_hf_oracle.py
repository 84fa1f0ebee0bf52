"""The same HF directories against transformers' LlamaForCausalLM (the optional `oracle` extra:
torch + transformers; CI installs it).  This checks the reference forward itself, and the
engine, against the implementation the checkpoints were made for."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402
from hf_fixtures import make_hf_dir  # noqa: E402

IDS = [1, 5, 77, 300, 2, 9, 400, 13, 511, 0, 42]
CASES = [  # every geometry, dtype and layout at least once
    ("gqa", "F32", 1), ("gqa", "BF16", 3),
    ("mha", "F16", 2), ("mha", "BF16", 1),
    ("smollm", "BF16", 2), ("smollm", "F32", 1),
    ("wide_heads", "F16", 3), ("wide_heads", "BF16", 1),
]
CASE_IDS = [f"{g}-{d}-{s}shard" for g, d, s in CASES]


def transformers_logits(path, ids) -> np.ndarray:
    """LlamaForCausalLM.from_pretrained(path) in float32: logits [len(ids), vocab] as float64."""
    # transformers >= 4.56 names the argument dtype; older versions torch_dtype
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kw = {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}
    model = transformers.LlamaForCausalLM.from_pretrained(str(path), **kw).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def assert_close(got, ref, rtol):
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


@pytest.mark.parametrize("geometry,dtype,shards", CASES, ids=CASE_IDS)
def test_reference_matches_transformers(tmp_path, geometry, dtype, shards):
    """tests/hf_reference.py (float64) against torch float32: only rounding differs."""
    m = make_hf_dir(tmp_path, geometry, dtype=dtype, shards=shards)
    assert_close(transformers_logits(m.path, IDS), hf_reference.forward(m.config, m.weights, IDS), 1e-5)


@pytest.mark.parametrize("geometry,dtype,shards", CASES, ids=CASE_IDS)
def test_engine_matches_transformers(tmp_path, geometry, dtype, shards):
    from xllm import LLM
    m = make_hf_dir(tmp_path, geometry, dtype=dtype, shards=shards)
    got = np.asarray(LLM(str(m.path), kv_type="f32").logits(IDS), dtype=np.float64)   # exact KV, as transformers
    assert_close(got, transformers_logits(m.path, IDS), 1e-4)
