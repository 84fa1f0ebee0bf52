"""Tokenizers for LLaMA-family models: one interface over three backends.

`Tokenizer` encodes text to ids and back with
  - "sentencepiece": a `.model` file, encoded by sentencepiece itself;
  - "native": a SentencePiece `Vocab` ("llama", from a llama2.c tokenizer.bin or GGUF),
    encoded by xllm/spm.py (sentencepiece's BPE, natively);
  - "tokenizers": a byte-level BPE `Vocab` ("gpt2", from GGUF) or an HF tokenizer.json,
    encoded by the `tokenizers` library (xllm/bpe.py).
`encode(text, special=True)` also matches special tokens written in the text (llama.cpp's
parse_special, for chat templates); by default they are plain text, as in llama.cpp's tests.
`eos_ids` are the ids that end generation (llama.cpp's EOG set).

Decoding streams (`StreamDecoder`): SentencePiece vocabularies follow sentencepiece's `Decode`
(control tokens invisible, the first piece loses its leading space, byte tokens assembled into
UTF-8, an invalid byte becomes U+FFFD); byte-level ones concatenate each token's bytes
(llama.cpp's token_to_piece) and hand out complete UTF-8 characters only.

The vocabularies themselves live in xllm/vocab.py; their names are re-exported here.
"""
from __future__ import annotations

import codecs
import operator
import os
import re
import threading
from typing import Iterable, Optional, Union

import numpy as np

from .spm import SpmBPE
from .vocab import (BYTE, BYTE_PIECE, CONTROL, MODELS, NORMAL, SPACE, SPECIAL_KEYS, TYPE_NAMES,
                    UNK_SURFACE, UNKNOWN, UNUSED, USER_DEFINED, Vocab, _load_sentencepiece)

__all__ = ["Tokenizer", "Vocab", "StreamDecoder", "load_tokenizer", "load_hf_tokenizer",
           "NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "TYPE_NAMES",
           "SPACE", "UNK_SURFACE", "MODELS", "SPECIAL_KEYS"]

REPLACEMENT = "\ufffd"           # what an invalid UTF-8 byte decodes to

# Token texts that end generation whatever their id (llama.cpp's special_eog_ids list).
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
             "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
             "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
             "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")


# ----------------------------------------------------------------------------- decoding

class StreamDecoder:
    """Decode token ids one at a time: `push(id)` returns the text this token completed.

    Byte tokens are held back only while they are the start of an incomplete UTF-8 character
    (at most 3 bytes), so the work per token is constant.  The concatenation of every push
    and of `flush()` equals `Tokenizer.decode(ids)` (sentencepiece's decode).
    """

    def __init__(self, tokenizer: "Tokenizer", context: Iterable[int] = ()):
        self._tables = tokenizer._tables            # per-id surfaces, built once per tokenizer
        self._pending = bytearray()                 # byte tokens of an unfinished character
        self._at_start = True                       # no text yet: a leading '▁' is dropped
        self._dropped_space = False                 # the last piece had its leading '▁' dropped
        self._has_text = False                      # some text (even held bytes) was produced
        for token in context:                       # already shown (e.g. BOS + prompt)
            self.push(token)

    def push(self, token_id) -> str:
        """The text that became complete with `token_id`."""
        t = self._tables
        i = _check_id(token_id, t.n)
        kind = t.kind[i]
        if kind == BYTE:
            self._pending.append(t.byte[i])
            self._has_text = True
            return _drain_bytes(self._pending, final=False)
        out = _drain_bytes(self._pending, final=True) if self._pending else ""
        # sentencepiece: the leading '▁' of the first piece is the dummy prefix, not text
        if self._dropped_space or self._has_text:
            self._at_start = False
        if kind == CONTROL:
            self._dropped_space = False
            return out
        if kind == UNKNOWN:
            self._dropped_space = False
            self._has_text = True
            return out + t.unk_surface
        text = t.text[i]
        dropped = False
        if self._at_start and t.strip_first and t.space_first[i]:
            text = text[1:]
            dropped = not t.remove_extra_whitespaces
        self._dropped_space = dropped
        if text:
            self._has_text = True
        return out + text

    def flush(self) -> str:
        """Text still held back: an unfinished UTF-8 character becomes U+FFFD per byte."""
        return _drain_bytes(self._pending, final=True)


class _DecodeTables:
    """Per-id decoding data, computed once per vocabulary."""

    def __init__(self, vocab: Vocab):
        self.n = len(vocab.pieces)                               # ids must be in [0, n)
        self.kind = vocab.types.tolist()                         # type of each id
        self.text = [p.replace(SPACE, " ") for p in vocab.pieces]  # surface of normal pieces
        self.space_first = [p.startswith(SPACE) for p in vocab.pieces]  # starts with '▁'
        self.byte = [0] * self.n                                 # value of each byte token
        for i, (p, k) in enumerate(zip(vocab.pieces, self.kind)):
            if k == BYTE:                                        # '<0xNN>', checked by Vocab
                self.byte[i] = int(BYTE_PIECE.fullmatch(p).group(1), 16)
        self.unk_surface = vocab.unk_surface                     # text of <unk>
        # sentencepiece drops the first leading '▁' only when the encoder adds one
        self.strip_first = vocab.add_space_prefix or vocab.remove_extra_whitespaces
        # ... and, when it also strips spaces, keeps dropping '▁' until some text appears
        self.remove_extra_whitespaces = vocab.remove_extra_whitespaces


def _check_id(token_id, n: int) -> int:
    try:
        i = operator.index(token_id)      # int or numpy integer, not float
    except TypeError:
        raise ValueError(f"token id {token_id!r} is not an integer") from None
    if not 0 <= i < n:
        raise ValueError(f"token id {i} is out of range for a vocabulary of {n} tokens "
                         f"(expected 0..{n - 1})")
    return i


def _utf8_length(lead: int) -> int:
    """Bytes of the UTF-8 character `lead` starts (as sentencepiece reads it); 0 if invalid."""
    if lead < 0x80:
        return 1
    if 0xC0 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF8:
        return 4
    return 0


def _drain_bytes(buf: bytearray, final: bool) -> str:
    """Decode the complete characters at the front of `buf` (removing them), like
    sentencepiece's ProcessBytePieces: a byte that does not start a valid character becomes
    U+FFFD and decoding resumes at the next byte.  An incomplete character at the end stays
    in `buf` unless `final`."""
    out = []
    while buf:
        need = _utf8_length(buf[0])
        if need and len(buf) < need and not final:
            break                         # may still complete with the next byte tokens
        if need and len(buf) >= need:
            try:
                out.append(bytes(buf[:need]).decode("utf-8"))
                del buf[:need]
                continue
            except UnicodeDecodeError:    # bad trail byte, overlong, surrogate, > U+10FFFF
                pass
        out.append(REPLACEMENT)
        del buf[:1]
    return "".join(out)


class ByteStreamDecoder(StreamDecoder):
    """StreamDecoder of a byte-level vocabulary: each token's bytes go through an incremental
    UTF-8 decoder, which holds back an unfinished character and turns invalid bytes into
    U+FFFD exactly as decoding the whole byte string at once does."""

    def __init__(self, tokenizer: "Tokenizer", context: Iterable[int] = ()):
        self._bytes = tokenizer._bytes              # per-id bytes, shared by the tokenizer's decoders
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        for token in context:                       # already shown (e.g. BOS + prompt)
            self.push(token)

    def push(self, token_id) -> str:
        return self._utf8.decode(self._bytes[_check_id(token_id, len(self._bytes))])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# ----------------------------------------------------------------------------- Tokenizer

class Tokenizer:
    """Encode text to token ids and back (sentencepiece, native SPM BPE, or `tokenizers`)."""

    def __init__(self, vocab: Vocab, sp=None, path: Optional[str] = None, hf=None):
        """`sp`: a sentencepiece processor of the same vocabulary; `hf`: a tokenizers.Tokenizer
        of a "gpt2" vocabulary (built from `vocab` when not given)."""
        self.vocab = vocab                 # the vocabulary (xllm/vocab.py)
        self.path = path                   # file it was read from, if any
        self._sp = sp                      # sentencepiece processor, or None
        self._bpe = None                   # native SentencePiece encoder, or None
        self._hf = None                    # tokenizers.Tokenizer for byte-level BPE, or None
        if vocab.model == "gpt2":
            from .bpe import TokenBytes, build_tokenizer
            self._hf = hf if hf is not None else build_tokenizer(vocab)
            self._hf_lock = threading.Lock()       # encode_special_tokens is per call
            self._bytes = TokenBytes(vocab)        # decoding data of every ByteStreamDecoder
        else:
            if sp is None:
                self._bpe = SpmBPE(vocab)
            self._tables = _DecodeTables(vocab)    # decoding data shared by every StreamDecoder
        self._special_re = None            # SPM: pattern of the specials encode(special=True) parses
        lookup = self._hf.token_to_id if self._hf is not None else None
        self.eos_ids = frozenset(eog_ids(vocab, lookup))   # ids that end generation

    @classmethod
    def from_file(cls, path, vocab_size: Optional[int] = None) -> "Tokenizer":
        """A `.model` file -> sentencepiece; a GGUF file -> its embedded vocabulary; a
        tokenizer.json, or an HF directory (its tokenizer.model, else its tokenizer.json) ->
        `tokenizers`; anything else is read as a llama2.c tokenizer.bin (native).
        `vocab_size`, when given, is the model's: the file must hold exactly that many tokens."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such tokenizer file")
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "tokenizer.model")):
                tok = cls.from_file(os.path.join(path, "tokenizer.model"))
            elif os.path.isfile(os.path.join(path, "tokenizer.json")):
                tok = load_hf_tokenizer(path)
            else:
                raise ValueError(f"{path}: is a directory without tokenizer.model or "
                                 f"tokenizer.json, expected a tokenizer file or an HF directory")
        elif path.endswith(".model"):
            sp = _load_sentencepiece(path)
            vocab = Vocab._from_processor(sp, path)
            tok = cls(vocab, sp=sp, path=path)
        elif path.endswith(".json"):
            tok = load_hf_tokenizer(path)
        else:
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic == b"GGUF":
                from .formats.gguf_reader import GGUFFile
                reader = GGUFFile(path)
                if "tokenizer.ggml.tokens" not in reader.fields:
                    raise ValueError(f"{path}: GGUF file has no embedded vocabulary "
                                     f"(no 'tokenizer.ggml.tokens')")
                vocab = Vocab.from_gguf(reader, path)
            else:
                vocab = Vocab.from_llama2c(path, vocab_size)
            tok = cls.from_vocab(vocab, path)
        if vocab_size is not None and tok.vocab_size != vocab_size:
            raise ValueError(f"{path}: holds {tok.vocab_size} tokens, expected {vocab_size} "
                             f"(the model's vocab_size): tokenizer and model do not match")
        return tok

    @classmethod
    def from_vocab(cls, vocab: Vocab, path: Optional[str] = None) -> "Tokenizer":
        """The tokenizer of `vocab` (from a GGUF file or anywhere else): the native BPE for a
        SentencePiece vocabulary, `tokenizers` for a byte-level one."""
        if vocab.model == "gpt2":
            try:
                return cls(vocab, path=path)
            except ValueError as exc:
                raise ValueError(f"{path or 'vocabulary'}: {exc}") from None
        return cls(vocab, path=path)

    @property
    def backend(self) -> str:
        if self._hf is not None:
            return "tokenizers"
        return "sentencepiece" if self._sp is not None else "native"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab.pieces)

    @property
    def bos_id(self) -> Optional[int]:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> Optional[int]:
        return self.vocab.eos_id

    @property
    def add_bos(self) -> bool:
        """Whether encode adds BOS by default (GGUF tokenizer.ggml.add_bos_token)."""
        return self.vocab.add_bos

    def encode(self, text: str, bos: Optional[bool] = None, eos: Optional[bool] = None,
               special: bool = False) -> list:
        """Token ids of `text`, with BOS first and EOS last if asked (None: as the vocabulary
        says, add_bos_token / add_eos_token).  `special`: text spelling a special or added
        token (e.g. "<|eot_id|>", "<s>") becomes that token, as llama.cpp's parse_special;
        otherwise it is ordinary text.  "" -> [BOS] or []."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        bos = self.vocab.add_bos if bos is None else bos
        eos = self.vocab.add_eos if eos is None else eos
        for wanted, value, name in ((bos, self.vocab.bos_id, "BOS"), (eos, self.vocab.eos_id, "EOS")):
            if wanted and value is None:
                raise ValueError(f"{self.path or 'this vocabulary'} has no {name} token, cannot add one")
        if self._hf is not None:
            with self._hf_lock:
                self._hf.encode_special_tokens = not special
                ids = self._hf.encode(text, add_special_tokens=False).ids
        elif special:
            ids = self._encode_parsing_specials(text)
        else:
            ids = self._encode_spm(text)
        if bos:
            ids.insert(0, self.vocab.bos_id)
        if eos:
            ids.append(self.vocab.eos_id)
        return ids

    def _encode_spm(self, text: str) -> list:
        return self._sp.encode(text) if self._sp is not None else self._bpe.encode(text)

    def _encode_parsing_specials(self, text: str) -> list:
        """llama.cpp's tokenizer_st_partition for SentencePiece: control, user-defined and
        unknown-type tokens are cut out of the text (longest first), each run of text between
        them is encoded on its own (so it gets the dummy-prefix space again)."""
        if self._special_re is None:
            v = self.vocab
            index = np.flatnonzero(np.isin(v.types, (CONTROL, USER_DEFINED, UNKNOWN))).tolist()
            self._special_id = {}
            for i in index:
                if v.pieces[i]:
                    self._special_id.setdefault(v.pieces[i], i)
            texts = sorted(self._special_id, key=len, reverse=True)
            self._special_re = re.compile("|".join(map(re.escape, texts))) if texts else False
        if not self._special_re:
            return self._encode_spm(text)
        ids, start = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > start:
                ids.extend(self._encode_spm(text[start:m.start()]))
            ids.append(self._special_id[m.group()])
            start = m.end()
        if start < len(text):
            ids.extend(self._encode_spm(text[start:]))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (sentencepiece's decode, or the UTF-8 of the tokens' bytes)."""
        if self._hf is not None:
            n = len(self._bytes)
            return b"".join(self._bytes[_check_id(i, n)] for i in ids).decode("utf-8", "replace")
        stream = StreamDecoder(self)
        parts = [stream.push(i) for i in ids]
        parts.append(stream.flush())
        return "".join(parts)

    def token_text(self, token_id: int) -> str:
        """One token's own text, as it stands in the output (for logprobs): byte-level tokens
        from their bytes (U+FFFD for a partial UTF-8 character), SentencePiece pieces with '▁'
        as a space and <0xNN> as that byte."""
        i = _check_id(token_id, self.vocab_size)
        if self._hf is not None:
            return self._bytes[i].decode("utf-8", errors="replace")
        t = self._tables
        if t.kind[i] == BYTE:
            return bytes([t.byte[i]]).decode("utf-8", errors="replace")
        return t.text[i]

    def stream_decoder(self, context: Iterable[int] = ()) -> StreamDecoder:
        """A decoder for ids arriving one by one.  `context`: ids already shown (e.g. BOS and
        the prompt), so the first new piece keeps its leading space."""
        if self._hf is not None:
            return ByteStreamDecoder(self, context)
        return StreamDecoder(self, context)

    def __getstate__(self):                # picklable (e.g. to another process): no lock
        state = self.__dict__.copy()
        state.pop("_hf_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._hf is not None:
            self._hf_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Tokenizer({self.backend}, {self.vocab_size} tokens, path={self.path!r})"


def eog_ids(vocab: Vocab, lookup=None) -> set:
    """The ids that end generation, collected as llama.cpp does: eos, eot, eom and the fim
    pad/rep/sep ids, plus every token spelled like one of EOG_TEXTS; '<|end|>' is dropped when
    the vocabulary also has gpt-oss's '<|return|>' and '<|call|>' (or solar-open's '<|calls|>'
    and '<|flush|>'), '</s>' when it has '<|tool_response>' or '<|plamo:eos|>'.  `lookup`:
    text -> id or None (the last id of a repeated text, as llama.cpp), else the pieces are
    searched."""
    ids = {vocab.eos_id} | {vocab.special_ids.get(name) for name in
                             ("eot", "eom", "fim_pad", "fim_rep", "fim_sep")}
    texts = EOG_TEXTS + ("<|plamo:eos|>",)
    if lookup is None:
        index, wanted = {}, frozenset(texts)
        for i, piece in enumerate(vocab.pieces):
            if piece in wanted:
                index[piece] = i
        lookup = index.get
    found = {text: lookup(text) for text in texts if lookup(text) is not None}
    ids |= {i for text, i in found.items() if text in EOG_TEXTS}
    if "<|end|>" in found and (("<|return|>" in found and "<|call|>" in found)
                               or ("<|calls|>" in found and "<|flush|>" in found)):
        ids.discard(found["<|end|>"])
    if "</s>" in found and ("<|tool_response>" in found or "<|plamo:eos|>" in found):
        ids.discard(found["</s>"])
    ids.discard(None)
    return ids


def load_hf_tokenizer(path) -> Tokenizer:
    """The tokenizer of an HF tokenizer.json (a file, or the directory holding it with its
    tokenizer_config.json / special_tokens_map.json / config.json), on `tokenizers`.  Its
    `.vocab` is what llama.cpp's converter writes to GGUF for it (`vocab.gguf_fields()`)."""
    from .bpe import hf_json_path, load_hf
    hf, vocab = load_hf(path)
    return Tokenizer(vocab, path=hf_json_path(path), hf=hf)


def load_tokenizer(source: Union[str, os.PathLike, Vocab, Tokenizer],
                   vocab_size: Optional[int] = None) -> Tokenizer:
    """A Tokenizer from a file or HF directory path (see `Tokenizer.from_file`), a Vocab, or a
    Tokenizer (returned as is)."""
    if isinstance(source, Tokenizer):
        return source
    if isinstance(source, Vocab):
        return Tokenizer.from_vocab(source)
    return Tokenizer.from_file(source, vocab_size)
