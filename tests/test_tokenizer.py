"""Tokenizer tests: sentencepiece is the oracle for ids and decoded text.

Both vocabularies in ../shared/models are checked: tok512 (stories260K's 512 tokens, where
emoji and most non-ASCII text need byte fallback) and Llama 2's 32000 tokens, each as a
llama2.c tokenizer.bin (native BPE) against its sentencepiece tokenizer.model.
"""
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from xllm.tokenizer import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, StreamDecoder,
                            Tokenizer, Vocab,
                            load_tokenizer)

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"

if not (MODELS / "tok512.model").exists():
    pytest.skip(f"shared models not found in {MODELS}", allow_module_level=True)

# name -> (llama2.c file, sentencepiece file, does the .model collapse spaces, known ids)
VOCABS = {
    # tok512.model was trained with sentencepiece's default remove_extra_whitespaces=true,
    # which a llama2.c tokenizer.bin cannot record: the native side is told.
    "tok512": ("tok512.bin", "tok512.model", True, [403, 407, 261, 378]),
    "llama2": ("tokenizer.bin", "tokenizer.model", False, [9038, 2501, 263, 931]),
}

CORPUS = [
    "Once upon a time",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "",
    " ",
    "   ",
    "hello",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "repeated  spaces   between    words",
    "tab\tseparated\tvalues\t",
    "new\nlines\n\nand a blank one\n",
    "\r\n\t mixed \t whitespace \n ",
    "Café, naïve, résumé, déjà vu, Ångström, ß",
    "日本語のテキストと中文字符",
    "Привет, мир! Как дела?",
    "Ελληνικά και עברית",
    "emoji 😀🎉 and 👍🏽 skin tone, flag 🇫🇷",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters and a rare CJK 𠀋",
    "digits 0123456789 and 3.14159, 1,000,000; year 2024",
    "<s> typed as text </s> and <unk> and <0x41>",
    "a literal \u2581 block and one at the end \u2581",
    "combining e\u0301 and ligature ﬁ and full width ＡＢＣ１",
    "control \x00\x01\x7f chars",
    "x",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
CORPUS.append("\n".join(CORPUS))      # everything at once: words across lines


@pytest.fixture(scope="module", params=list(VOCABS))
def pair(request):
    """(name, native tokenizer from the .bin, sentencepiece backend, raw sentencepiece)."""
    bin_name, model_name, remove_ws, known = VOCABS[request.param]
    native = Tokenizer.from_vocab(Vocab.from_llama2c(MODELS / bin_name, remove_extra_whitespaces=remove_ws))
    sp_tok = Tokenizer.from_file(MODELS / model_name)
    sp = spm.SentencePieceProcessor(model_file=str(MODELS / model_name))
    return request.param, native, sp_tok, sp


# ----------------------------------------------------------------------------- vocabularies

@pytest.mark.parametrize("name", list(VOCABS))
def test_llama2c_vocab_equals_sentencepiece(name):
    bin_name, model_name, _, _ = VOCABS[name]
    vocab = Vocab.from_llama2c(MODELS / bin_name)
    sp = spm.SentencePieceProcessor(model_file=str(MODELS / model_name))
    assert len(vocab) == sp.get_piece_size()
    for i in range(sp.get_piece_size()):
        assert vocab.pieces[i] == sp.id_to_piece(i), i
        assert vocab.scores[i] == np.float32(sp.get_score(i)), i
        expected = (BYTE if sp.is_byte(i) else CONTROL if sp.is_control(i)
                    else UNKNOWN if sp.is_unknown(i) else NORMAL)
        assert vocab.types[i] == expected, i
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert vocab.scores.dtype == np.float32 and vocab.types.dtype == np.int32


@pytest.mark.parametrize("name", list(VOCABS))
def test_sentencepiece_vocab_equals_llama2c(name):
    bin_name, model_name, remove_ws, _ = VOCABS[name]
    from_sp = Vocab.from_sentencepiece(MODELS / model_name)
    from_bin = Vocab.from_llama2c(MODELS / bin_name, remove_extra_whitespaces=remove_ws)
    assert from_sp.pieces == from_bin.pieces
    assert np.array_equal(from_sp.scores, from_bin.scores)
    assert np.array_equal(from_sp.types, from_bin.types)
    assert from_sp.remove_extra_whitespaces == remove_ws
    assert from_sp.add_space_prefix


def test_other_llama2c_vocab_reads():
    # aidreams260K's own 512-token vocabulary: no sentencepiece model to compare with
    vocab = Vocab.from_llama2c(MODELS / "aidreams260K_tok512.bin")
    assert len(vocab) == 512
    assert vocab.pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert vocab.pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert (vocab.types[3:259] == BYTE).all() and (vocab.types[259:] == NORMAL).all()
    assert not any(" " in p for p in vocab.pieces)
    tok = Tokenizer.from_vocab(vocab)
    text = "Once upon a time, Lily saw 3 big dogs. 😀"
    assert tok.decode(tok.encode(text)) == text


def test_token_types_are_gguf_values():
    import gguf
    from xllm import tokenizer as t
    for name in ("NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"):
        assert getattr(t, name) == getattr(gguf.TokenType, name).value


# ----------------------------------------------------------------------------- encode

def test_encode_matches_sentencepiece(pair):
    name, native, sp_tok, sp = pair
    for text in CORPUS:
        expected = [sp.bos_id()] + sp.encode(text)
        assert native.encode(text) == expected, (name, text)
        assert sp_tok.encode(text) == expected, (name, text)


def test_known_ids(pair):
    name, native, sp_tok, _ = pair
    known = VOCABS[name][3]
    assert native.encode("Once upon a time") == [1] + known
    assert sp_tok.encode("Once upon a time") == [1] + known
    # and with llama2.c's defaults (file read as is)
    assert Tokenizer.from_file(MODELS / VOCABS[name][0]).encode("Once upon a time") == [1] + known


def test_bos_eos_and_empty(pair):
    _, native, sp_tok, _ = pair
    for tok in (native, sp_tok):
        assert tok.encode("") == [tok.bos_id]
        assert tok.encode("", bos=False) == []
        assert tok.encode("hi", eos=True)[-1] == tok.eos_id
        assert tok.encode("hi", bos=False, eos=False)[0] != tok.bos_id
        assert (tok.bos_id, tok.eos_id) == (1, 2)


def test_byte_fallback_is_exercised():
    tok = Tokenizer.from_file(MODELS / "tok512.bin")
    ids = tok.encode("😀", bos=False)
    # '▁' then the four UTF-8 bytes F0 9F 98 80 as <0xNN> tokens (ids 3 + byte)
    assert ids[-4:] == [3 + b for b in "😀".encode("utf-8")]
    assert tok.decode(ids) == "😀"


def test_special_pieces_typed_as_text_are_not_specials(pair):
    _, native, _, _ = pair
    ids = native.encode("<s></s><unk>", bos=False)
    assert not set(ids) & {0, 1, 2}


def test_merges_never_produce_control_pieces():
    # here '<s' + '>' would spell '<s>', but BOS is a control piece: not a merge target
    pieces = ["<unk>", "<s>", "</s>", "\u2581", "<", "s", ">", "<s"]
    vocab = Vocab(pieces, [0, 0, 0, -1, -2, -3, -4, -5], [UNKNOWN, CONTROL, CONTROL] + [NORMAL] * 5)
    assert Tokenizer.from_vocab(vocab).encode("<s>", bos=False) == [3, 7, 6]


def test_user_defined_pieces_match_sentencepiece(tmp_path):
    # GGUF vocabularies may mark added tokens USER_DEFINED: sentencepiece matches them whole
    import io
    user = ["<|user|>", "ce\u2581u", "ittl"]
    lines = ["Once upon a time there was a little girl named Lily.",
             "She liked <|user|> tokens and foo bar.", "日本語 and Привет"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=360, model_type="bpe",
        byte_fallback=True, user_defined_symbols=user, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    path = tmp_path / "user.model"
    path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    vocab = Vocab.from_sentencepiece(path)
    for piece in user:       # the Python API cannot tell user-defined pieces apart
        vocab.types[vocab.pieces.index(piece)] = USER_DEFINED
    tok = Tokenizer.from_vocab(vocab)
    for text in CORPUS + ["Once upon a time<|user|>ittle", "<|user|><|user|>x", "since upon"]:
        assert tok.encode(text) == [1] + sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)), text


def test_unused_pieces_are_split_back():
    # sentencepiece merges into an UNUSED piece, then resegments it into the pair it came from
    pieces = ["<unk>", "<s>", "</s>", "a", "b", "ab", "c", "abc"]
    types = [UNKNOWN, CONTROL, CONTROL, NORMAL, NORMAL, UNUSED, NORMAL, NORMAL]
    vocab = Vocab(pieces, [0, 0, 0, -1, -1, 0, -1, -2], types, add_space_prefix=False)
    tok = Tokenizer.from_vocab(vocab)
    assert tok.encode("ab", bos=False) == [3, 4]
    assert tok.encode("abc", bos=False) == [7]       # the unused piece still merges on


def test_llama2c_default_keeps_spaces():
    # without remove_extra_whitespaces the native tokenizer is llama2.c's: spaces are text
    tok = Tokenizer.from_file(MODELS / "tok512.bin")
    assert tok.encode("a  b") != tok.encode("a b")
    assert tok.decode(tok.encode("  a  b ")) == "  a  b "


def test_long_text_matches_sentencepiece_without_quadratic_time():
    # a guard against O(n^2) merging, not a benchmark: 100 KB in one call and in one word
    tok = Tokenizer.from_file(MODELS / "tokenizer.bin")
    sp = spm.SentencePieceProcessor(model_file=str(MODELS / "tokenizer.model"))
    rng = random.Random(0)
    words = ["the", "little", "girl", "Lily", "played", "in", "park", "naïve", "日本", "😀", "\n", "42"]
    prose = " ".join(rng.choice(words) for _ in range(20000))[:100_000]
    one_word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz日本語") for _ in range(100_000))
    for text in (prose, one_word):
        start = time.perf_counter()
        ids = tok.encode(text)
        assert time.perf_counter() - start < 10.0
        assert ids == [1] + sp.encode(text)
        stream = tok.stream_decoder()
        start = time.perf_counter()
        streamed = "".join(stream.push(i) for i in ids) + stream.flush()
        assert time.perf_counter() - start < 10.0
        assert streamed == sp.decode(ids) == text


# ----------------------------------------------------------------------------- decode

def _random_id_sequences(n_vocab, seed, count=300, with_unk=True):
    """Random ids biased towards byte tokens (valid and invalid UTF-8) and specials."""
    rng = random.Random(seed)
    emoji = [3 + b for b in "😀".encode("utf-8")]
    cyr = [3 + b for b in "ж".encode("utf-8")]
    for _ in range(count):
        seq = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.35:
                seq.append(rng.randint(3, 258))                 # any byte token
            elif r < 0.45:
                seq.extend(rng.choice([emoji, cyr, emoji[:2], cyr[:1]]))
            elif r < 0.55:
                seq.append(rng.choice([0, 1, 2] if with_unk else [1, 2]))
            else:
                seq.append(rng.randint(259, n_vocab - 1))
        yield seq


def test_decode_matches_sentencepiece(pair):
    name, native, sp_tok, sp = pair
    for text in CORPUS:
        ids = [1] + sp.encode(text)
        assert native.decode(ids) == sp.decode(ids), (name, text)
        assert sp_tok.decode(ids) == sp.decode(ids), (name, text)
    # the .bin cannot know tok512.model's odd unk surface: <unk> only through the .model
    with_unk = name != "tok512"
    for seq in _random_id_sequences(sp.get_piece_size(), seed=1, with_unk=with_unk):
        assert native.decode(seq) == sp.decode(seq), (name, seq)
    for seq in _random_id_sequences(sp.get_piece_size(), seed=2):
        assert sp_tok.decode(seq) == sp.decode(seq), (name, seq)


def test_decode_round_trip(pair):
    name, native, _, sp = pair
    for text in CORPUS:
        expected = sp.decode(sp.encode(text))       # sentencepiece's normalized text
        assert native.decode(native.encode(text)) == expected, (name, text)
        if not VOCABS[name][2] and "\u2581" not in text:   # lossless unless spaces are
                                                             # collapsed or '▁' is typed
            assert native.decode(native.encode(text)) == text, (name, text)


def test_leading_space_rule():
    tok = Tokenizer.from_file(MODELS / "tokenizer.bin")
    once = tok.encode("Once", bos=False)[0]          # '▁Once'
    assert tok.vocab.pieces[once] == "\u2581Once"
    assert tok.decode([1, once]) == "Once"           # right after BOS: space dropped
    assert tok.decode([once]) == "Once"              # start of text: dropped too
    assert tok.decode([1, once, once]) == "Once Once"
    assert tok.decode([1, 1, once]) == "Once"        # control tokens are invisible
    assert tok.decode([1, 2, 0]) == " \u2047 "


def test_decode_bad_ids(pair):
    _, native, sp_tok, _ = pair
    n = native.vocab_size
    for tok in (native, sp_tok):
        for bad in ([n], [1, 2, n + 5], [-1]):
            with pytest.raises(ValueError, match="out of range"):
                tok.decode(bad)
        with pytest.raises(ValueError, match="not an integer"):
            tok.decode([1.5])
        with pytest.raises(ValueError, match="out of range"):
            tok.stream_decoder().push(n)
    assert native.decode(np.array([1, 403], dtype=np.int64)) == native.decode([1, 403])


# ----------------------------------------------------------------------------- streaming

def test_stream_equals_decode(pair):
    name, native, sp_tok, sp = pair
    sequences = [[1] + sp.encode(text) for text in CORPUS]
    sequences += list(_random_id_sequences(sp.get_piece_size(), seed=3))
    for tok in (native, sp_tok):
        for ids in sequences:
            stream = tok.stream_decoder()
            pieces = [stream.push(i) for i in ids]
            assert "".join(pieces) + stream.flush() == tok.decode(ids), (name, ids)
            # every piece handed out is whole text: never a lone surrogate or a split char
            assert all(p.encode("utf-8") is not None for p in pieces)


def test_stream_holds_incomplete_utf8():
    tok = Tokenizer.from_file(MODELS / "tok512.bin")
    emoji = [3 + b for b in "😀".encode("utf-8")]
    stream = tok.stream_decoder(context=[1])
    assert [stream.push(i) for i in emoji] == ["", "", "", "😀"]
    assert stream.flush() == ""
    # an unfinished character is replaced once the byte run ends, as decode does
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in emoji[:2]] == ["", ""]
    assert stream.flush() == "\ufffd\ufffd" == tok.decode(emoji[:2])


def test_stream_context_keeps_the_space():
    tok = Tokenizer.from_file(MODELS / "tokenizer.bin")
    prompt = tok.encode("Once upon a time")
    rest = tok.encode(" there was", bos=False)[1:]          # '▁there', '▁was'
    stream = tok.stream_decoder(context=prompt)
    assert "".join(stream.push(i) for i in rest) + stream.flush() == " there was"
    assert isinstance(stream, StreamDecoder)


# ----------------------------------------------------------------------------- GGUF

def _write_gguf(path, vocab, fields=None):
    import gguf
    writer = gguf.GGUFWriter(str(path), "llama")
    if fields is None:
        vocab.add_to_gguf(writer)
    else:  # hand-written values, to build bad files
        for key, (value, vtype, sub_type) in fields.items():
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("name", list(VOCABS))
def test_gguf_round_trip(tmp_path, name):
    import gguf
    bin_name, model_name, remove_ws, _ = VOCABS[name]
    vocab = Vocab.from_sentencepiece(MODELS / model_name)
    fields = vocab.gguf_fields()
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == vocab.pieces
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.add_eos_token"] is False
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    path = tmp_path / "vocab.gguf"
    _write_gguf(path, vocab)

    reader = gguf.GGUFReader(str(path))
    bos = reader.fields["tokenizer.ggml.bos_token_id"]
    assert bos.types == [gguf.GGUFValueType.UINT32]          # llama.cpp reads ids as uint32
    assert reader.fields["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY,
                                                                 gguf.GGUFValueType.INT32]
    back = Vocab.from_gguf(reader, path)
    assert back.pieces == vocab.pieces
    assert np.array_equal(back.scores, vocab.scores) and np.array_equal(back.types, vocab.types)
    assert (back.bos_id, back.eos_id, back.unk_id) == (1, 2, 0)
    assert back.remove_extra_whitespaces == remove_ws and back.add_space_prefix

    sp = spm.SentencePieceProcessor(model_file=str(MODELS / model_name))
    tok = Tokenizer.from_vocab(back)
    for text in CORPUS:
        assert tok.encode(text) == [1] + sp.encode(text), text
    from_file = Tokenizer.from_file(path)                     # a GGUF given as tokenizer
    assert from_file.backend == "native" and from_file.encode(CORPUS[-1]) == tok.encode(CORPUS[-1])


def _tiny_fields(**override):
    import gguf
    T = gguf.GGUFValueType
    fields = {
        "tokenizer.ggml.model": ("llama", T.STRING, None),
        "tokenizer.ggml.tokens": (["<unk>", "<s>", "</s>", "a"], T.ARRAY, T.STRING),
        "tokenizer.ggml.scores": ([0.0, 0.0, 0.0, -1.0], T.ARRAY, T.FLOAT32),
        "tokenizer.ggml.token_type": ([2, 3, 3, 1], T.ARRAY, T.INT32),
    }
    fields.update(override)
    return {k: v for k, v in fields.items() if v is not None}


def _read_vocab(tmp_path, **override):
    import gguf
    path = tmp_path / "bad.gguf"
    _write_gguf(path, None, _tiny_fields(**override))
    return Vocab.from_gguf(gguf.GGUFReader(str(path)), path)


def test_gguf_tiny_vocab_reads(tmp_path):
    vocab = _read_vocab(tmp_path)
    assert vocab.pieces == ["<unk>", "<s>", "</s>", "a"]
    tok = Tokenizer.from_vocab(vocab)
    # no '▁' piece and no byte tokens: the dummy prefix becomes <unk>, as in sentencepiece
    assert tok.encode("a") == [1, 0, 3]


def test_gguf_wrong_tokenizer_model(tmp_path):
    import gguf
    with pytest.raises(ValueError, match=r"bad\.gguf.*tokenizer\.ggml\.model = 'bert', expected "
                                         r"one of \['llama', 'gpt2'\]"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.model": ("bert", gguf.GGUFValueType.STRING, None)})
    with pytest.raises(ValueError, match=r"bad\.gguf: missing or empty GGUF key 'tokenizer\.ggml\.merges'"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING, None)})


def test_gguf_bad_fields(tmp_path):
    import gguf
    T = gguf.GGUFValueType
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.scores has 2 entries, expected 4"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.scores": ([0.0, 1.0], T.ARRAY, T.FLOAT32)})
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.token_type has 3 entries, expected 4"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.token_type": ([2, 3, 3], T.ARRAY, T.INT32)})
    with pytest.raises(ValueError, match=r"bos_token_id = 9, expected a token id in \[0, 4\)"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.bos_token_id": (9, T.UINT32, None)})
    with pytest.raises(ValueError, match=r"'tokenizer\.ggml\.tokens' has type ARRAY/INT32, "
                                         r"expected an array of STRING"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.tokens": ([1, 2, 3, 4], T.ARRAY, T.INT32)})
    with pytest.raises(ValueError, match=r"missing GGUF key 'tokenizer\.ggml\.model'"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.model": None})
    with pytest.raises(ValueError, match=r"token types \[9\]"):
        _read_vocab(tmp_path, **{"tokenizer.ggml.token_type": ([2, 3, 3, 9], T.ARRAY, T.INT32)})


# ----------------------------------------------------------------------------- bad files

def test_truncated_llama2c_tokenizer(tmp_path):
    data = (MODELS / "tok512.bin").read_bytes()
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(data[:-3])                               # last token cut short
    with pytest.raises(ValueError, match=r"tokenizer\.bin: truncated: token 511 needs"):
        Vocab.from_llama2c(path)
    path.write_bytes(data[:-(len(Vocab.from_llama2c(MODELS / "tok512.bin").pieces[-1].encode()) + 6)])
    with pytest.raises(ValueError, match=r"truncated: token 511 needs an 8-byte header"):
        Vocab.from_llama2c(path)
    path.write_bytes(data[:2])
    with pytest.raises(ValueError, match=r"2 bytes long, too short"):
        Vocab.from_llama2c(path)
    path.write_bytes(data[:4])
    with pytest.raises(ValueError, match="holds no tokens"):
        Vocab.from_llama2c(path)
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=r"tokenizer\.bin: truncated"):
        Tokenizer.from_file(path)


def test_malformed_llama2c_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(struct.pack("<Ifi", 4, 0.0, 9) + b"too long!")
    with pytest.raises(ValueError, match=r"token 0 has byte length 9, expected 1\.\.4"):
        Vocab.from_llama2c(path)
    path.write_bytes(struct.pack("<Ifi", 4, 0.0, 2) + b"\xff\xfe")
    with pytest.raises(ValueError, match="token 0 is .* not valid UTF-8"):
        Vocab.from_llama2c(path)
    # a model checkpoint passed as the tokenizer
    with pytest.raises(ValueError, match="stories260K.bin"):
        Tokenizer.from_file(MODELS / "stories260K.bin")


def test_llama2c_wrong_token_count():
    with pytest.raises(ValueError, match=r"holds 512 tokens, expected 32000 \(the model's vocab_size\)"):
        Vocab.from_llama2c(MODELS / "tok512.bin", vocab_size=32000)
    with pytest.raises(ValueError, match=r"holds more than 100 tokens"):
        Vocab.from_llama2c(MODELS / "tok512.bin", vocab_size=100)
    with pytest.raises(ValueError, match=r"holds 32000 tokens, expected 512"):
        Tokenizer.from_file(MODELS / "tokenizer.model", vocab_size=512)
    assert len(Vocab.from_llama2c(MODELS / "tok512.bin", vocab_size=512)) == 512


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        Tokenizer.from_file(tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.from_file(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match=r"bad\.model: not a sentencepiece model"):
        Tokenizer.from_file(bad)


def test_vocab_validation():
    with pytest.raises(ValueError, match="2 pieces but 3 scores"):
        Vocab(["a", "b"], [0, 0, 0], [1, 1], bos_id=0, eos_id=0)
    with pytest.raises(ValueError, match=r"eos_id = 2, expected a token id in \[0, 2\)"):
        Vocab(["a", "b"], [0, 0], [1, 1], bos_id=1)


def test_load_tokenizer():
    vocab = Vocab.from_llama2c(MODELS / "tok512.bin")
    tok = load_tokenizer(vocab)
    assert tok.backend == "native" and tok.vocab is vocab and tok.vocab_size == 512
    assert load_tokenizer(tok) is tok
    assert load_tokenizer(str(MODELS / "tok512.model")).backend == "sentencepiece"
    assert load_tokenizer(MODELS / "tok512.bin").vocab == vocab
