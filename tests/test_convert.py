"""GGUF writing (write_gguf, xllm-convert) and llama2.c version-2 int8 (ak42) loading."""
import dataclasses
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

import xllm.convert as convert
from quant.reference import BLOCK_Q8_0, quantize_q4_0, quantize_q8_0
from xllm.config import ModelConfig
from xllm.convert import load_vocab, main, write_gguf
from xllm.formats.llama2c_int8 import open_llama2c_int8
from xllm.formats import (F16, F32, Q4_0, Q8_0, Checkpoint, Tensor, layer_tensor_shapes,
                          open_checkpoint)

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
STORIES = MODELS / "stories260K.bin"
TOK512 = MODELS / "tok512.bin"


@pytest.fixture(scope="module")
def stories():
    return open_checkpoint(STORIES)


@pytest.fixture(scope="module")
def vocab512():
    return load_vocab(TOK512)


def same_config(a: ModelConfig, b: ModelConfig):
    """Equal, except norm_eps which GGUF stores as float32."""
    assert np.float32(a.norm_eps) == np.float32(b.norm_eps)
    assert dataclasses.replace(a, norm_eps=0.5) == dataclasses.replace(b, norm_eps=0.5)


def field(reader, key):
    f = reader.fields[key]
    return f.contents(), f.types[0] if len(f.types) == 1 else (f.types[0], f.types[-1])


def no_leftovers(directory: Path, allowed=()):
    return sorted(p.name for p in directory.iterdir() if p.name not in allowed) == []


# ----------------------------------------------------------------------------- llama2.c -> GGUF

def test_convert_stories_round_trips(tmp_path, stories, vocab512, capsys):
    out = tmp_path / "stories.gguf"
    assert main([str(STORIES), "-o", str(out), "--token", str(TOK512)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "47 tensors" in line and str(out) in line
    back = open_checkpoint(out)
    same_config(back.config, stories.config)
    assert sorted(back.tensors) == sorted(stories.tensors)
    for name, t in stories.tensors.items():
        b = back.tensors[name]
        assert b.ggml_type == F32 and b.shape == t.shape, name
        np.testing.assert_array_equal(b.data, t.data, err_msg=name)
    assert back.vocab == vocab512


def test_written_file_has_llama_cpp_keys_and_names(tmp_path, stories, vocab512):
    out = tmp_path / "stories.gguf"
    write_gguf(stories, out, vocab=vocab512, progress=False)
    r = GGUFReader(out)
    U32, F32T, STR = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING
    expected = {
        "general.architecture": ("llama", STR), "general.name": ("stories260K", STR),
        "general.file_type": (0, U32), "llama.vocab_size": (512, U32),
        "llama.context_length": (512, U32), "llama.embedding_length": (64, U32),
        "llama.block_count": (5, U32), "llama.feed_forward_length": (172, U32),
        "llama.attention.head_count": (8, U32), "llama.attention.head_count_kv": (4, U32),
        "llama.rope.dimension_count": (8, U32), "llama.rope.freq_base": (10000.0, F32T),
        "tokenizer.ggml.model": ("llama", STR), "tokenizer.ggml.bos_token_id": (1, U32),
        "tokenizer.ggml.eos_token_id": (2, U32),
    }
    for key, value in expected.items():
        assert field(r, key) == value, key
    eps, eps_type = field(r, "llama.attention.layer_norm_rms_epsilon")
    assert eps_type == F32T and np.float32(eps) == np.float32(1e-5)
    assert "llama.attention.key_length" not in r.fields          # head_dim == dim / n_heads
    assert "general.quantization_version" not in r.fields
    tokens, ttype = field(r, "tokenizer.ggml.tokens")
    assert ttype == (GGUFValueType.ARRAY, STR) and tokens == vocab512.pieces
    assert field(r, "tokenizer.ggml.scores")[1] == (GGUFValueType.ARRAY, F32T)
    assert field(r, "tokenizer.ggml.token_type")[1] == (GGUFValueType.ARRAY, GGUFValueType.INT32)
    names = [t.name for t in r.tensors]
    assert sorted(names) == sorted(layer_tensor_shapes(stories.config))
    assert "output.weight" not in names                          # tied classifier
    assert names[0] == "token_embd.weight" and names[-1] == "output_norm.weight"
    assert names[1:10] == [f"blk.0.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v",
                           "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    for rt in r.tensors:
        assert rt.data_offset % 32 == 0
        assert [int(v) for v in rt.shape] == list(reversed(stories.tensors[rt.name].shape))


def test_f16_conversion(tmp_path, stories, capsys):
    out = tmp_path / "f16.gguf"
    assert main([str(STORIES), "-o", str(out), "--token", str(MODELS / "tok512.model"),
                 "--dtype", "f16"]) == 0
    assert "36 F16, 11 F32" in capsys.readouterr().out
    back = open_checkpoint(out)
    for name, t in stories.tensors.items():
        b = back.tensors[name]
        if len(t.shape) == 1:
            assert b.ggml_type == F32
            np.testing.assert_array_equal(b.data, t.data)
        else:
            assert b.ggml_type == F16 and b.data.dtype == np.float16
            np.testing.assert_array_equal(b.data, np.asarray(t.data).astype(np.float16))
    # and back to f32: exactly the f16 values
    out32 = tmp_path / "f32.gguf"
    assert main([str(out), "-o", str(out32), "--dtype", "f32"]) == 0
    again = open_checkpoint(out32)
    np.testing.assert_array_equal(again.tensors["blk.2.attn_k.weight"].data,
                                  back.tensors["blk.2.attn_k.weight"].data.astype(np.float32))


def synthetic_checkpoint(vocab_size=512, seed=0):
    """GQA, head_dim != dim/n_heads, untied classifier, rope theta 5e5, eps 1e-6."""
    cfg = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2,
                      vocab_size=vocab_size, max_seq_len=256, head_dim=32, norm_eps=1e-6,
                      rope_theta=5e5, tied_embeddings=False).validate("synthetic")
    rng = np.random.default_rng(seed)
    tensors = {name: Tensor(name, F32, shape, rng.standard_normal(shape).astype(np.float32) * 0.1)
               for name, shape in layer_tensor_shapes(cfg).items()}
    return Checkpoint("synthetic.bin", cfg, tensors, None, "llama2c")


def test_synthetic_config_and_quantized_types_round_trip(tmp_path, vocab512):
    ckpt = synthetic_checkpoint()
    out = tmp_path / "mixed.gguf"
    choice = {"attn_q": Q8_0, "attn_k": Q4_0, "ffn_up": F16}

    def tensor_type(t):
        return next((v for k, v in choice.items() if k in t.name), Q8_0 if "blk.1" in t.name else F32)

    seen = []
    report = write_gguf(ckpt, out, tensor_type=tensor_type, vocab=vocab512, progress=False,
                        on_tensor=lambda t, ty, data: seen.append((t.name, ty)))
    assert report.n_tensors == len(ckpt.tensors) == len(seen)
    r = GGUFReader(out)
    assert field(r, "llama.attention.key_length") == (32, GGUFValueType.UINT32)
    assert field(r, "llama.attention.value_length") == (32, GGUFValueType.UINT32)
    assert field(r, "llama.rope.dimension_count") == (32, GGUFValueType.UINT32)
    assert field(r, "general.quantization_version") == (2, GGUFValueType.UINT32)
    back = open_checkpoint(out)
    same_config(back.config, ckpt.config)
    assert not back.config.tied_embeddings
    for rt in r.tensors:
        src = ckpt.tensors[rt.name]
        want = F32 if len(src.shape) == 1 else tensor_type(src)
        assert int(rt.tensor_type) == want, rt.name
        assert [int(v) for v in rt.shape] == list(reversed(src.shape))
        got = back.tensors[rt.name]
        if want == Q8_0:
            np.testing.assert_array_equal(got.data, quantize_q8_0(src.data))
        elif want == Q4_0:
            np.testing.assert_array_equal(got.data, quantize_q4_0(src.data))
        elif want == F16:
            np.testing.assert_array_equal(got.data, src.data.astype(np.float16))
        else:
            np.testing.assert_array_equal(got.data, src.data)


def test_conversion_in_small_chunks_is_identical(monkeypatch):
    ckpt = synthetic_checkpoint()
    t = ckpt.tensors["blk.0.ffn_gate.weight"]
    whole = {ty: convert.convert_tensor(t, ty) for ty in (F16, Q8_0, Q4_0)}
    monkeypatch.setattr(convert, "_CHUNK_VALUES", 100)       # one or two rows per pass
    for ty, data in whole.items():
        np.testing.assert_array_equal(convert.convert_tensor(t, ty), data)
    q = Tensor(t.name, Q8_0, t.shape, whole[Q8_0])
    np.testing.assert_array_equal(convert.convert_tensor(q, F32), q.to_float32())


def test_conversion_refuses_values_out_of_range():
    big = Tensor("w", F32, (2, 32), np.full((2, 32), 1e6, dtype=np.float32))
    with pytest.raises(ValueError, match="float16"):
        convert.convert_tensor(big, F16)
    with pytest.raises(ValueError, match="too large for Q4_0"):
        convert.convert_tensor(big, Q4_0)
    with pytest.raises(ValueError, match="row length 33"):
        convert.convert_tensor(Tensor("w", F32, (2, 33), np.ones((2, 33), np.float32)), Q8_0)


def test_vocab_size_must_match(tmp_path, vocab512):
    ckpt = synthetic_checkpoint(vocab_size=500)
    with pytest.raises(ValueError, match="512 tokens.*500"):
        write_gguf(ckpt, tmp_path / "x.gguf", vocab=vocab512)
    assert no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- atomicity

class Boom(RuntimeError):
    pass


def failing_after(monkeypatch, n, exc):
    real = convert.convert_tensor
    calls = []

    def flaky(t, ty):
        calls.append(t.name)
        if len(calls) > n:
            raise exc
        return real(t, ty)
    monkeypatch.setattr(convert, "convert_tensor", flaky)
    return calls


@pytest.mark.parametrize("exc", [Boom("disk on fire"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, stories, vocab512, exc):
    calls = failing_after(monkeypatch, 10, exc)
    out = tmp_path / "out.gguf"
    with pytest.raises(type(exc)):
        write_gguf(stories, out, tensor_type=lambda t: Q8_0 if t.shape[1] % 32 == 0 else F32,
                   vocab=vocab512, progress=False)
    assert len(calls) == 11                                 # it failed midway
    assert no_leftovers(tmp_path)                           # no OUT, no temporary file


def test_failed_write_keeps_existing_output(tmp_path, monkeypatch, stories, vocab512):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous contents")
    failing_after(monkeypatch, 3, Boom("late failure"))
    with pytest.raises(Boom):
        write_gguf(stories, out, vocab=vocab512, progress=False)
    assert out.read_bytes() == b"previous contents"
    assert no_leftovers(tmp_path, allowed={"out.gguf"})


def test_ctrl_c_in_cli_exits_130_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    failing_after(monkeypatch, 5, KeyboardInterrupt())
    out = tmp_path / "out.gguf"
    assert main([str(STORIES), "-o", str(out), "--token", str(TOK512)]) == 130
    assert no_leftovers(tmp_path)


def test_output_appears_only_when_complete(tmp_path, stories, vocab512):
    out = tmp_path / "out.gguf"
    seen = []
    write_gguf(stories, out, vocab=vocab512, progress=False,
               on_tensor=lambda t, ty, data: seen.append((out.exists(), [p.name for p in tmp_path.iterdir()])))
    assert len(seen) == 47
    for exists, names in seen:                 # while writing: only the temporary file
        assert not exists and len(names) == 1
        assert names[0].startswith(".out.gguf.") and names[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_successful_write_replaces_output_with_normal_permissions(tmp_path, stories, vocab512):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    write_gguf(stories, out, vocab=vocab512, progress=False)
    assert out.read_bytes()[:4] == b"GGUF"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert no_leftovers(tmp_path, allowed={"out.gguf"})


# ----------------------------------------------------------------------------- CLI errors

def cli_error(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("xllm-convert: error: ") and err.count("\n") == 1, err
    return err


def test_convert_cli_errors(tmp_path, capsys):
    out = tmp_path / "out.gguf"
    assert "no vocabulary" in cli_error(capsys, [STORIES, "-o", out])
    err = cli_error(capsys, [STORIES, "-o", out, "--token", MODELS / "tokenizer.bin"])
    assert "32000" in err and "512" in err
    assert "missing.bin" in cli_error(capsys, [tmp_path / "missing.bin", "-o", out, "--token", TOK512])
    assert "--dtype" in cli_error(capsys, [STORIES, "-o", out, "--dtype", "q8", "--token", TOK512])
    assert "-o" in cli_error(capsys, [STORIES])
    assert "does not exist" in cli_error(capsys, [STORIES, "-o", tmp_path / "nodir" / "x.gguf",
                                                  "--token", TOK512])
    assert "missing.bin" in cli_error(capsys, [STORIES, "-o", out, "--token", tmp_path / "missing.bin"])
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(STORIES.read_bytes()[:-100])
    assert "truncated" in cli_error(capsys, [truncated, "-o", out, "--token", TOK512])
    assert not out.exists()
    # OUT == SRC is refused and SRC stays intact
    src = tmp_path / "model.gguf"
    assert main([str(STORIES), "-o", str(src), "--token", str(TOK512)]) == 0
    capsys.readouterr()
    before = src.read_bytes()
    assert "input" in cli_error(capsys, [src, "-o", src])
    link = tmp_path / "link.gguf"
    link.symlink_to(src)
    assert "input" in cli_error(capsys, [src, "-o", link])
    assert src.read_bytes() == before
    assert no_leftovers(tmp_path, allowed={"model.gguf", "link.gguf", "truncated.bin"})


# ----------------------------------------------------------------------------- llama2.c int8 (ak42)

AK42 = 0x616B3432
INT8_ORDER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")


def write_ak42(path, ckpt, gs, shared=True, version=2, magic=AK42, vocab_size=None, mutate=None):
    """A llama2.c `export.py --version 2` file from `ckpt`'s weights, quantized as export.py's
    quantize_q80 does: per group of gs flattened values, scale = max|w| / 127, q = round(w / scale)."""
    c = ckpt.config
    w = {n: np.asarray(t.data, dtype=np.float32) for n, t in ckpt.tensors.items()}
    if not shared:
        w["output.weight"] = -0.5 * w["token_embd.weight"]
    header = struct.pack("<Ii7iBi", magic, version, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                         c.n_kv_heads, c.vocab_size if vocab_size is None else vocab_size,
                         c.max_seq_len, int(shared), gs)
    parts = [header + b"\0" * (256 - len(header))]
    for name in ("attn_norm", "ffn_norm"):
        parts += [w[f"blk.{i}.{name}.weight"].tobytes() for i in range(c.n_layers)]
    parts.append(w["output_norm.weight"].tobytes())
    order = ["token_embd.weight"] + [f"blk.{i}.{n}.weight" for n in INT8_ORDER for i in range(c.n_layers)]
    if not shared:
        order.append("output.weight")
    groups = {}
    for name in order:
        g = w[name].reshape(-1, gs)
        scale = (np.abs(g).max(axis=1) / np.float32(127)).astype(np.float32)
        q = np.round(g / scale[:, None]).astype(np.int8)
        if mutate:
            mutate(name, q, scale)
        parts += [q.tobytes(), scale.astype("<f4").tobytes()]
        groups[name] = (q, scale)
    Path(path).write_bytes(b"".join(parts))
    return groups


@pytest.mark.parametrize("gs", [64, 32])
@pytest.mark.parametrize("shared", [True, False])
def test_ak42_loads_as_q8_0(tmp_path, stories, gs, shared):
    path = tmp_path / "int8.bin"
    groups = write_ak42(path, stories, gs, shared=shared)
    assert path.read_bytes()[:4] == b"24ka"           # struct.pack('I', 0x616b3432), little-endian
    ckpt = open_llama2c_int8(path)
    same_config(ckpt.config, dataclasses.replace(stories.config, tied_embeddings=shared))
    assert ("output.weight" in ckpt.tensors) == (not shared)
    for name, t in stories.tensors.items():
        if len(t.shape) == 1:
            assert ckpt.tensors[name].ggml_type == F32
            np.testing.assert_array_equal(ckpt.tensors[name].data, t.data)
    for name, (q, scale) in groups.items():
        got = ckpt.tensors[name]
        exact = (q.astype(np.float32) * scale[:, None]).reshape(got.shape)    # llama2.c's value
        if got.shape[1] % 32:                                                 # ffn_down: 172
            assert got.ggml_type == F32, name
            np.testing.assert_array_equal(got.data, exact)
            continue
        assert got.ggml_type == Q8_0, name
        assert got.data.dtype == np.uint8 and got.data.shape == (got.shape[0], got.shape[1] // 32 * 34)
        blocks = got.data.reshape(-1).view(BLOCK_Q8_0)
        np.testing.assert_array_equal(blocks["qs"].reshape(-1), q.reshape(-1))
        np.testing.assert_array_equal(blocks["d"], np.repeat(scale.astype(np.float16), gs // 32))
        deq = got.to_float32()
        s16 = scale.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(deq, (q.astype(np.float32) * s16[:, None]).reshape(got.shape))
        # within the fp16 rounding of the scale: relative 2^-11 of the group's largest value
        bound = (127 * np.abs(scale - s16))[:, None] * np.ones_like(q, dtype=np.float32)
        assert np.all(np.abs(deq - exact) <= bound.reshape(got.shape) + np.spacing(np.abs(exact)))
        assert np.all(np.abs(scale - s16) <= scale * 2.0 ** -11)


def test_ak42_converts_to_gguf_keeping_its_blocks(tmp_path, stories, vocab512):
    path = tmp_path / "int8.bin"
    write_ak42(path, stories, 64)
    ckpt = open_llama2c_int8(path)
    out = tmp_path / "int8.gguf"
    write_gguf(ckpt, out, vocab=vocab512, progress=False)
    back = open_checkpoint(out)
    same_config(back.config, ckpt.config)
    for name, t in ckpt.tensors.items():
        assert back.tensors[name].ggml_type == t.ggml_type
        np.testing.assert_array_equal(back.tensors[name].data, t.data)
    assert GGUFReader(out).fields["general.file_type"].contents() == 7


def test_ak42_through_open_checkpoint(tmp_path, stories):
    path = tmp_path / "int8.bin"
    write_ak42(path, stories, 64)
    assert open_checkpoint(path).tensors["blk.0.attn_q.weight"].ggml_type == Q8_0


@pytest.mark.parametrize("kwargs,message", [
    (dict(version=1), "version = 1"),
    (dict(gs=48), "group_size = 48"),
    (dict(gs=16), "group_size = 16"),
    (dict(magic=0x12345678), "magic"),
    (dict(vocab_size=-512), "vocab_size = -512"),
    (dict(mutate=lambda n, q, s: s.__setitem__(3, np.nan) if n == "blk.1.attn_v.weight" else None),
     "blk.1.attn_v.weight.*scale nan"),
])
def test_ak42_bad_header_or_values(tmp_path, stories, kwargs, message):
    path = tmp_path / "bad.bin"
    kwargs = {"gs": 64, **kwargs}
    if kwargs["gs"] == 48:                       # export.py never writes it; stories' sizes fit 16
        kwargs["gs"] = 16
        write_ak42(path, stories, **kwargs)
        raw = bytearray(path.read_bytes())
        raw[37:41] = struct.pack("<i", 48)
        path.write_bytes(bytes(raw))
    else:
        write_ak42(path, stories, **kwargs)
    with pytest.raises(ValueError, match=message):
        open_llama2c_int8(path)


def test_ak42_sizes_and_flags_are_checked(tmp_path, stories):
    path = tmp_path / "int8.bin"
    write_ak42(path, stories, 64)
    good = path.read_bytes()
    for data, message in ((good[:-1], "truncated"), (good + b"\0\0\0\0", "trailing data"),
                          (good[:100], "too short"),
                          (good[:36] + b"\x02" + good[37:], "shared_classifier = 2")):
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            open_llama2c_int8(path)
    shutil.copy(STORIES, path)                   # a legacy file is not an ak42 file
    with pytest.raises(ValueError, match="magic"):
        open_llama2c_int8(path)
