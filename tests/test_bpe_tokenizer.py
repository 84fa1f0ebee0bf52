"""Byte-level BPE and GGUF vocabularies: llama.cpp's vocab test vectors and `tokenizers` are the oracles.

../shared/fixtures/vocab holds the files llama.cpp's test-tokenizer-0 runs on (reading rules in
../shared/fixtures/README.md: no BOS/EOS, special-token text is plain text).  Every text of
every vocabulary must give the expected ids, from the GGUF file and -- for the byte-level ones
-- from the same vocabulary written as an HF tokenizer.json the way the model repositories
spell theirs (GPT-2: a ByteLevel pre-tokenizer with its own regex; Llama 3: a Split on the
original tokenizer.json regex, then ByteLevel, and a template adding <|begin_of_text|>).
"""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xllm.bpe_pre import PRE_TOKENIZERS
from xllm.tokenizer import (CONTROL, NORMAL, UNKNOWN, USER_DEFINED, StreamDecoder, Tokenizer, Vocab,
                            load_hf_tokenizer, load_tokenizer)

VOCAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vocab"
VOCABS = ["llama-spm", "llama-bpe", "gpt-2", "phi-3"]
BYTE_LEVEL = ["llama-bpe", "gpt-2"]
SEP = "\n__ggml_vocab_test__\n"

# Llama 3's tokenizer.json regex as the repository has it (llama.cpp spells the (?i:...) out)
LLAMA3_HF_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _path(name):
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/fixtures beside the checkout")
    return path


def read_vectors(name):
    """[(text, ids)] of a vocabulary, read as llama.cpp's test-tokenizer-0 reads them."""
    path = _path(name)
    raw = Path(f"{path}.inp").read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = Path(f"{path}.out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ids = [[int(x) for x in line.split()] for line in lines]
    assert len(texts) == len(ids) == 46
    return list(zip(texts, ids))


_CACHE = {}


def gguf_tokenizer(name):
    if name not in _CACHE:
        _CACHE[name] = Tokenizer.from_file(_path(name))
    return _CACHE[name]


def write_hf_dir(vocab: Vocab, directory: Path) -> Path:
    """`vocab` as the model repositories write it: tokenizer.json + tokenizer_config.json."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    token_ids = {p: i for i, p in enumerate(vocab.pieces)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    llama3 = vocab.pre == "llama-bpe"
    hf = HFTokenizer(models.BPE(token_ids, merges, ignore_merges=llama3))
    if llama3:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_HF_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        bos = vocab.pieces[vocab.bos_id]
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)])
    else:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(vocab.pieces[i], special=True, normalized=False)
                           for i in np.flatnonzero(vocab.types == CONTROL).tolist()])
    directory.mkdir(parents=True, exist_ok=True)
    hf.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": vocab.pieces[vocab.bos_id], "eos_token": vocab.pieces[vocab.eos_id],
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: write_hf_dir(gguf_tokenizer(name).vocab, root / name) for name in BYTE_LEVEL}


@pytest.fixture(scope="module")
def hf_tokenizers(hf_dirs):
    return {name: load_tokenizer(hf_dirs[name]) for name in BYTE_LEVEL}    # HF directories


# ----------------------------------------------------------------------------- llama.cpp's vectors

@pytest.mark.parametrize("name", VOCABS)
def test_vectors_from_gguf(name):
    tok = gguf_tokenizer(name)
    assert tok.backend == ("tokenizers" if name in BYTE_LEVEL else "native")
    for text, ids in read_vectors(name):
        assert tok.encode(text, bos=False, eos=False) == ids, (name, text)


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_vectors_from_tokenizer_json(name, hf_tokenizers):
    tok = hf_tokenizers[name]
    assert tok.backend == "tokenizers"
    for text, ids in read_vectors(name):
        assert tok.encode(text, bos=False, eos=False) == ids, (name, text)


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_tokenizer_json_gives_the_gguf_vocabulary(name, hf_tokenizers):
    # what convert_hf_to_gguf.py would write: the pre-tokenizer found by its hash table
    from_hf = hf_tokenizers[name].vocab
    from_gguf = gguf_tokenizer(name).vocab
    assert from_hf.pre == from_gguf.pre == name
    assert from_hf.pieces == from_gguf.pieces and from_hf.merges == from_gguf.merges
    assert np.array_equal(from_hf.types, from_gguf.types)
    assert (from_hf.bos_id, from_hf.eos_id) == (from_gguf.bos_id, from_gguf.eos_id)
    assert from_hf.add_bos == from_gguf.add_bos == (name == "llama-bpe")
    assert from_hf.chat_template.startswith("{{ bos_token }}")


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_ids_equal_tokenizers_library(name, hf_dirs):
    # the HF tokenizer.json loaded by `tokenizers` itself, special tokens parsed or not
    from tokenizers import Tokenizer as HFTokenizer
    hf = HFTokenizer.from_file(str(hf_dirs[name] / "tokenizer.json"))
    tok = gguf_tokenizer(name)
    texts = [text for text, _ in read_vectors(name)]
    texts += ["<|endoftext|> and <|begin_of_text|><|eot_id|> typed", "x" * 5000 + " ok"]
    for text in texts:
        assert tok.encode(text, bos=False, special=True) == hf.encode(
            text, add_special_tokens=False).ids, text
        assert tok.decode(hf.encode(text, add_special_tokens=False).ids) == hf.decode(
            hf.encode(text, add_special_tokens=False).ids), text


def spm_as_tokenizers(vocab: Vocab):
    """A SentencePiece vocabulary as transformers' LlamaConverter writes its tokenizer.json
    (merges from the scores as SentencePieceExtractor derives them, byte fallback), loaded by
    `tokenizers`: the fast tokenizer the SPM vectors were made with."""
    from tokenizers import AddedToken, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer
    pieces = vocab.pieces
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []
    for piece, score in zip(pieces, vocab.scores.tolist()):
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in ids and piece[k:] in ids]
        merges.extend(sorted(local, key=lambda m: (ids[m[0]], ids[m[1]])))
    merges.sort(key=lambda m: m[2], reverse=True)
    hf = HFTokenizer(models.BPE(ids, [(a, b) for a, b, _ in merges], unk_token=pieces[vocab.unk_id],
                                fuse_unk=True, byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                          normalizers.Replace(" ", "\u2581")])
    special = np.flatnonzero(np.isin(vocab.types, (CONTROL, UNKNOWN))).tolist()
    hf.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in special])
    hf.encode_special_tokens = True       # special-token text is plain text (parse_special=false)
    return hf


@pytest.fixture(scope="module")
def spm_oracles():
    return {name: spm_as_tokenizers(gguf_tokenizer(name).vocab) for name in ("llama-spm", "phi-3")}


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_sentencepiece_vectors_equal_tokenizers_library(name, spm_oracles):
    for text, ids in read_vectors(name):
        assert spm_oracles[name].encode(text, add_special_tokens=False).ids == ids, text


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_sentencepiece_equals_tokenizers_library(name, spm_oracles, text):
    # phi-3 types '</s>' USER_DEFINED: matched inside the normalized text as sentencepiece
    # does, where llama.cpp and transformers cut it out first (and prefix the rest again)
    assume("</s>" not in text or name != "phi-3")
    expected = spm_oracles[name].encode(text, add_special_tokens=False).ids
    assert gguf_tokenizer(name).encode(text, bos=False) == expected


# ----------------------------------------------------------------------------- special tokens

def test_special_tokens_llama3():
    tok = gguf_tokenizer("llama-bpe")
    text = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    assert tok.encode(text, special=True) == [128000, 128006, 882, 128007, 271, 6151, 128009]
    plain = tok.encode(text, bos=False)
    assert not set(plain) & set(range(128000, 128256)) and tok.decode(plain) == text
    assert tok.encode("hi") == [128000, 6151] and tok.add_bos
    assert tok.eos_ids == {128001, 128009}                 # <|end_of_text|>, <|eot_id|>
    assert tok.decode([128000, 6151, 128009]) == "hi"      # control tokens are invisible


def test_special_tokens_gpt2():
    tok = gguf_tokenizer("gpt-2")
    assert not tok.add_bos and tok.encode("hi") == [5303]  # GPT-2 adds no BOS
    assert tok.encode("hi<|endoftext|>", special=True) == [5303, 50256]
    assert 50256 not in tok.encode("hi<|endoftext|>")
    assert tok.eos_ids == {50256} and tok.bos_id == tok.eos_id == 50256


def test_special_tokens_sentencepiece():
    spm = gguf_tokenizer("llama-spm")
    hi = spm.encode("hi", bos=False)
    assert spm.encode("<s>hi</s>", bos=False, special=True) == [1] + hi + [2]
    assert not {1, 2} & set(spm.encode("<s>hi</s>", bos=False))
    assert spm.eos_ids == {2}
    phi = gguf_tokenizer("phi-3")
    user, end = phi.vocab.pieces.index("<|user|>"), phi.vocab.pieces.index("<|end|>")
    ids = phi.encode("<|user|>hi<|end|>", special=True)
    assert ids == [1, user] + phi.encode("hi", bos=False) + [end]
    assert user not in phi.encode("<|user|>hi", bos=False)
    assert phi.eos_ids == {2, 32000, end}                  # </s>, eos <|endoftext|>, <|end|>
    assert phi.vocab.special_ids == {"pad": 32000}


def test_special_tokens_sentencepiece_backend(shared_models):
    tok = Tokenizer.from_file(shared_models / "tokenizer.model")
    assert tok.backend == "sentencepiece"
    hi = tok.encode("hi", bos=False)
    assert tok.encode("hi</s>hi", special=True) == [1] + hi + [2] + hi
    assert tok.encode("hi</s>hi") == [1] + tok.encode("hi</s>hi", bos=False)


def test_user_defined_tokens_always_match():
    # llama.cpp matches USER_DEFINED tokens whole even when specials are not parsed
    vocab = gguf_tokenizer("gpt-2").vocab
    user = len(vocab)                                      # raw text, as the converter writes it
    custom = Tokenizer.from_vocab(Vocab(vocab.pieces + ["my token"], None,
                                        np.append(vocab.types, USER_DEFINED), bos_id=50256,
                                        eos_id=50256, unk_id=None, model="gpt2",
                                        merges=vocab.merges, pre="gpt-2", add_bos=False))
    ids = custom.encode("say my token now")
    assert user in ids and custom.decode(ids) == "say my token now"


def test_pickle():
    import pickle
    tok = gguf_tokenizer("gpt-2")
    copy = pickle.loads(pickle.dumps(tok))
    text = "hi<|endoftext|> there 😀"
    assert copy.encode(text, special=True) == tok.encode(text, special=True) == [5303, 50256] + \
        tok.encode(" there 😀")
    assert copy.decode(copy.encode(text)) == text and copy.eos_ids == tok.eos_ids


# ----------------------------------------------------------------------------- decoding

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@pytest.mark.parametrize("name", BYTE_LEVEL)
@settings(max_examples=150, deadline=None)
@given(text=TEXT)
def test_round_trip(name, text):
    tok = gguf_tokenizer(name)
    assert tok.decode(tok.encode(text, bos=False)) == text
    assert tok.decode(tok.encode(text)) == text            # BOS decodes to nothing


@pytest.mark.parametrize("name", BYTE_LEVEL)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_stream_equals_decode(name, data):
    tok = gguf_tokenizer(name)
    byte_tokens = [tok.vocab.pieces.index(c) for c in "ðŁĺĢ"]     # 😀's bytes F0 9F 98 80
    ids = data.draw(st.lists(st.one_of(st.integers(0, tok.vocab_size - 1),
                                       st.sampled_from(byte_tokens)), max_size=20))
    text = data.draw(TEXT)
    for seq in (ids, tok.encode(text)):
        stream = tok.stream_decoder()
        assert isinstance(stream, StreamDecoder)
        pieces = [stream.push(i) for i in seq]
        assert "".join(pieces) + stream.flush() == tok.decode(seq)
        for piece in pieces:
            piece.encode("utf-8")                          # whole characters only


def test_stream_holds_incomplete_characters():
    tok = gguf_tokenizer("llama-bpe")
    ids = tok.encode("a😀", bos=False)
    assert len(ids) > 2                                    # the emoji is several byte tokens
    stream = tok.stream_decoder(context=[128000])
    out = [stream.push(i) for i in ids]
    assert out[0] == "a" and out[-1] == "😀" and all(o == "" for o in out[1:-1])
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in ids[:2]] == ["a", ""] and stream.flush() == "\ufffd"


def test_decode_bad_ids():
    tok = gguf_tokenizer("gpt-2")
    with pytest.raises(ValueError, match="token id 50257 is out of range"):
        tok.decode([1, 50257])
    with pytest.raises(ValueError, match="not an integer"):
        tok.stream_decoder().push(1.0)


# ----------------------------------------------------------------------------- GGUF

def _write(path, fields):
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (value, vtype, sub) in fields.items():
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def test_gguf_round_trip(tmp_path):
    from xllm.formats.gguf_reader import GGUFFile
    vocab = gguf_tokenizer("gpt-2").vocab
    fields = vocab.gguf_fields()
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert "tokenizer.ggml.scores" not in fields
    writer = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "gpt2")
    vocab.add_to_gguf(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    reader = GGUFFile(tmp_path / "v.gguf")
    T = gguf.GGUFValueType
    assert reader.fields["tokenizer.ggml.merges"].types == [T.ARRAY, T.STRING]
    assert reader.fields["tokenizer.ggml.pre"].types == [T.STRING]
    assert reader.fields["tokenizer.ggml.eos_token_id"].types == [T.UINT32]
    assert Vocab.from_gguf(reader, tmp_path / "v.gguf") == vocab


def test_unknown_pre_tokenizer_is_refused_first(tmp_path):
    T = gguf.GGUFValueType
    # no merges: the pre-tokenizer is looked at before anything else
    _write(tmp_path / "bad.gguf", {"tokenizer.ggml.model": ("gpt2", T.STRING, None),
                                   "tokenizer.ggml.pre": ("kimi-k2", T.STRING, None),
                                   "tokenizer.ggml.tokens": (["a"], T.ARRAY, T.STRING)})
    with pytest.raises(ValueError, match=r"bad\.gguf: tokenizer\.ggml\.pre = 'kimi-k2' is not a "
                                         r"supported pre-tokenizer; supported: .*llama-bpe.*qwen2"):
        Tokenizer.from_file(tmp_path / "bad.gguf")
    assert {"default", "llama-bpe", "llama3", "smollm", "qwen2", "gpt-2", "starcoder", "refact",
            "falcon", "deepseek-llm", "deepseek-coder", "mpt", "olmo", "dbrx", "command-r",
            "stablelm2", "tekken", "gpt-4o"} <= set(PRE_TOKENIZERS)


def test_every_pre_tokenizer_builds():
    # each regex compiles in the library's Oniguruma and splits text losslessly
    from tokenizers import Regex, pre_tokenizers
    from xllm.bpe_pre import CHKHSH
    text = "Hello, World! I'll pay $1234.5 for 日本語 😀\n\n  tabs\tand ÀÉÎ don't"
    for name, pre in PRE_TOKENIZERS.items():
        split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), "isolated")
                                         for r in pre.splits])
        assert "".join(p for p, _ in split.pre_tokenize_str(text)) == text, name
    assert set(CHKHSH.values()) <= set(PRE_TOKENIZERS)


def test_bad_byte_level_vocabularies():
    vocab = gguf_tokenizer("gpt-2").vocab
    args = dict(bos_id=50256, eos_id=50256, unk_id=None, model="gpt2", pre="gpt-2")
    with pytest.raises(ValueError, match="needs merges"):
        Vocab(vocab.pieces, None, vocab.types, merges=[], **args)
    with pytest.raises(ValueError, match=r"merge 1 is 'Ġt', expected two tokens"):
        Tokenizer.from_vocab(Vocab(vocab.pieces, None, vocab.types,
                                   merges=["Ġ t", "Ġt"], **args))
    with pytest.raises(ValueError, match="the merges do not fit the tokens"):
        Tokenizer.from_vocab(Vocab(vocab.pieces, None, vocab.types,
                                   merges=["Ġ zzzq"], **args))
    with pytest.raises(ValueError, match=r"vocabulary pre-tokenizer = 'nope'"):
        Vocab(vocab.pieces, None, vocab.types, merges=vocab.merges,
              **dict(args, pre="nope"))
    with pytest.raises(ValueError, match="has no BOS token"):
        Tokenizer.from_vocab(Vocab(vocab.pieces, None, vocab.types, merges=vocab.merges,
                                   **dict(args, bos_id=None))).encode("hi", bos=True)


def test_padded_vocabulary():
    vocab = gguf_tokenizer("gpt-2").vocab
    padded = vocab.padded(50304)
    assert len(padded) == 50304 and padded.pieces[-1] == "[PAD50303]"
    assert (padded.types[50257:] == 5).all() and padded.scores is None
    assert Tokenizer.from_vocab(padded).encode("Hello world") == [15496, 995]
    with pytest.raises(ValueError, match="cannot pad a 50257-token vocabulary to 10 tokens"):
        vocab.padded(10)


# ----------------------------------------------------------------------------- HF files

def test_hf_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json: no such tokenizer file"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a JSON file"):
        load_hf_tokenizer(tmp_path)
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
    wordpiece = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"model type 'WordPiece', expected 'BPE'"):
        load_tokenizer(tmp_path)
    metaspace = HFTokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"'Metaspace'\] have no 'ByteLevel'"):
        load_tokenizer(tmp_path / "tokenizer.json")
    bytelevel = HFTokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bytelevel.pre_tokenizer = pre_tokenizers.ByteLevel()
    bytelevel.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"its pre-tokenizer is not one llama\.cpp knows"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="without tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)


def test_hf_special_tokens_map(tmp_path, hf_dirs):
    # ids named only in special_tokens_map.json are found there
    import shutil
    shutil.copy(hf_dirs["gpt-2"] / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>"}))
    tok = load_hf_tokenizer(tmp_path / "tokenizer.json")          # the file itself
    assert (tok.bos_id, tok.eos_id) == (50256, 50256) and tok.vocab.chat_template is None
    assert tok.vocab.types[50256] == CONTROL and (tok.vocab.types[:50256] == NORMAL).all()


def test_convert_hf_directory_with_tokenizer_json(tmp_path, hf_dirs):
    # xllm-convert of a llama HF directory that ships only tokenizer.json (embedding padded
    # past the tokenizer, as HF models often are): the GGUF holds what llama.cpp reads
    import shutil

    from hf_fixtures import make_hf_dir
    from xllm.convert import main
    from xllm.formats.gguf_reader import GGUFFile
    m = make_hf_dir(tmp_path, "mha", tokenizer=None, vocab_size=50304,
                    config_overrides={"bos_token_id": 50256, "eos_token_id": 50256})
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dirs["gpt-2"] / file, m.path / file)
    out = tmp_path / "model.gguf"
    assert main([str(m.path), "-o", str(out)]) == 0
    reader = GGUFFile(out)
    T = gguf.GGUFValueType
    assert reader.fields["tokenizer.ggml.model"].value == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].value == "gpt-2"
    assert reader.fields["tokenizer.ggml.merges"].types == [T.ARRAY, T.STRING]
    assert reader.fields["tokenizer.ggml.bos_token_id"].types == [T.UINT32]
    vocab = Vocab.from_gguf(reader, out)
    expected = gguf_tokenizer("gpt-2").vocab
    assert len(vocab) == 50304 and vocab.pieces[:50257] == expected.pieces
    assert vocab.merges == expected.merges and (vocab.types[50257:] == 5).all()
    assert vocab.chat_template.startswith("{{ bos_token }}")
    tok = Tokenizer.from_file(out)
    for text, ids in read_vectors("gpt-2"):
        assert tok.encode(text, bos=False) == ids, text


@pytest.mark.parametrize("name", VOCABS)
def test_token_text_concatenates_to_the_decoded_text(name):
    """token_text (the text of one token, as logprobs show it) of each id of an ASCII text,
    joined, is the decoded text: byte-level 'Ġ' and SentencePiece '▁' both become a space."""
    tok = gguf_tokenizer(name)
    text = "Hello world, the 3 cats\nran"
    ids = tok.encode(text, bos=False)
    joined = "".join(tok.token_text(i) for i in ids)
    assert joined.lstrip(" ") == tok.decode(ids) == text
    with pytest.raises(ValueError):
        tok.token_text(tok.vocab_size)
