"""The fast GGUF reader against gguf.GGUFReader, and its answers to corrupt files."""
import numpy as np
import pytest
from gguf import GGUFReader

from model_factory import random_checkpoint, write_gguf
from xllm.config import ModelConfig
from xllm.formats.gguf_reader import GGUFFile
from xllm.tokenizer import Vocab
from xllm.formats import F16, Q4_0, Q8_0


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_models):
    d = tmp_path_factory.mktemp("gguf")
    cfg = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, max_seq_len=64)
    vocab = Vocab.from_sentencepiece(shared_models / "tokenizer.model")
    out = []
    for t in (F16, Q8_0, Q4_0):
        path = d / f"m{t}.gguf"
        write_gguf(path, cfg, random_checkpoint(cfg, t).tensors, vocab)
        out.append(path)
    small = ModelConfig(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64)
    path = d / "small.gguf"                     # for the corruption sweep: quick to parse
    write_gguf(path, small, random_checkpoint(small, Q8_0).tensors, Vocab.from_llama2c(shared_models / "tok512.bin"))
    out.append(path)
    return out


def test_same_as_gguf_reader(files):
    for path in files:
        ours, ref = GGUFFile(path), GGUFReader(str(path))
        ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}  # its pseudo-keys
        assert set(ours.fields) == set(ref_fields)
        for key, f in ref_fields.items():
            assert ours.fields[key].types == [int(t) for t in f.types], key
            a, b = ours.fields[key].contents(), f.contents()
            assert (np.allclose(a, b) if isinstance(b, (float, list)) and b and isinstance(np.ravel(b)[0], float)
                    else a == b), key
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        for a, b in zip(ours.tensors, ref.tensors):
            assert a.tensor_type == int(b.tensor_type) and a.data_offset == b.data_offset
            assert a.n_bytes == int(b.n_bytes) and tuple(a.shape) == tuple(int(x) for x in b.shape)
            assert np.array_equal(a.data.reshape(-1).view(np.uint8), np.asarray(b.data).reshape(-1).view(np.uint8))


def test_tensors_are_views_of_the_file(files):
    f = GGUFFile(files[0])
    for t in f.tensors:
        assert not t.data.flags.owndata and not t.data.flags.writeable


def test_truncations_and_corruptions_are_value_errors(files, tmp_path):
    """Cut the file anywhere in its header or data, or flip header bytes: always a
    ValueError naming the file (never another exception, a hang or a crash)."""
    data = files[-1].read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.gguf"
    cuts = sorted(set(rng.integers(0, len(data), 60).tolist()) | {0, 3, 4, 10, 23, 24, 100})
    for cut in cuts:
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="bad.gguf"):
            GGUFFile(bad)
    header_end = GGUFFile(files[-1]).tensors[0].data_offset
    for _ in range(200):
        b = bytearray(data)
        i = int(rng.integers(4, header_end))
        b[i] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(b))
        try:
            GGUFFile(bad)
        except ValueError as exc:
            assert "bad.gguf" in str(exc)
