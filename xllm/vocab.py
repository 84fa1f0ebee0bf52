"""Vocabularies: what a tokenizer needs, whatever file it came from, and how GGUF stores it.

Two kinds, named as GGUF's `tokenizer.ggml.model` names them:
  - "llama": SentencePiece.  Pieces use '\u2581' for a space, byte tokens are '<0xNN>', each
    piece has a score (merge priority).  Read from a sentencepiece `.model`, a llama2.c
    `tokenizer.bin` or a GGUF file.
  - "gpt2": byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM ...).  Tokens are spelled in GPT-2's
    byte-to-unicode alphabet ('\u0120' for a space), `merges` ("left right", best first) drive
    the BPE, `pre` names the pre-tokenizer split (`tokenizer.ggml.pre`, see xllm/bpe_pre.py).
    Read from a GGUF file or an HF tokenizer.json (xllm/bpe.py).
Both are written back into GGUF by `gguf_fields` / `add_to_gguf`, with the keys and value
types llama.cpp reads.
"""
from __future__ import annotations

import dataclasses
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .bpe_pre import PRE_TOKENIZERS, check_pre

SPACE = "\u2581"                 # '▁': how sentencepiece writes a space inside a piece
UNK_SURFACE = " \u2047 "         # sentencepiece's default text for <unk> (" ⁇ ")

# Token types, the values of gguf.TokenType (and of sentencepiece's ModelProto piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "NORMAL", UNKNOWN: "UNKNOWN", CONTROL: "CONTROL",
              USER_DEFINED: "USER_DEFINED", UNUSED: "UNUSED", BYTE: "BYTE"}
MODELS = ("llama", "gpt2")       # tokenizer.ggml.model values this package tokenizes

BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")   # sentencepiece spells byte pieces "<0x%02X>"

# llama2.c's export writes BOS/EOS this way (run.c prints them on their own line).
_LLAMA2C_SPECIALS = {"\n<s>\n": "<s>", "\n</s>\n": "</s>"}

# Special ids other than bos/eos/unk: short name -> GGUF key (llama.cpp's LLM_KV_TOKENIZER_*_ID).
SPECIAL_KEYS = {
    "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
    "pad": "tokenizer.ggml.padding_token_id", "sep": "tokenizer.ggml.seperator_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id", "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id", "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id", "fim_sep": "tokenizer.ggml.fim_sep_token_id",
}

# GGUF value types of the tokenizer keys `Vocab.gguf_fields` returns (key -> (type, element
# type)), as llama.cpp reads them: ids are uint32, flags bool, token_type an int32 array.
_GGUF_TYPES = {
    "tokenizer.ggml.model": ("STRING", None),
    "tokenizer.ggml.pre": ("STRING", None),
    "tokenizer.ggml.tokens": ("ARRAY", "STRING"),
    "tokenizer.ggml.scores": ("ARRAY", "FLOAT32"),
    "tokenizer.ggml.token_type": ("ARRAY", "INT32"),
    "tokenizer.ggml.merges": ("ARRAY", "STRING"),
    "tokenizer.ggml.bos_token_id": ("UINT32", None),
    "tokenizer.ggml.eos_token_id": ("UINT32", None),
    "tokenizer.ggml.unknown_token_id": ("UINT32", None),
    **{key: ("UINT32", None) for key in SPECIAL_KEYS.values()},
    "tokenizer.ggml.add_bos_token": ("BOOL", None),
    "tokenizer.ggml.add_eos_token": ("BOOL", None),
    "tokenizer.ggml.add_space_prefix": ("BOOL", None),
    "tokenizer.ggml.remove_extra_whitespaces": ("BOOL", None),
    "tokenizer.chat_template": ("STRING", None),
}

PAD_SCORE = -10000.0    # llama.cpp's converter fills ids past the tokenizer with '[PAD<id>]' at this score


@dataclass
class Vocab:
    """A vocabulary: tokens, their types and special ids, and what the tokenizer of its `model`
    needs (scores for "llama", merges and the pre-tokenizer name for "gpt2")."""
    pieces: list[str]             # one per id: sentencepiece form, or GPT-2 byte-level alphabet
    scores: Optional[np.ndarray]  # float32 [n]: SPM merge priority; None for "gpt2" without scores
    types: np.ndarray             # int32 [n]: NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
    bos_id: Optional[int] = 1     # prepended by encode(bos=True); None: the vocabulary has none
    eos_id: Optional[int] = 2
    unk_id: Optional[int] = 0     # SPM: for a character with no piece and no byte tokens
    add_space_prefix: bool = True             # sentencepiece's add_dummy_prefix: text starts with '▁'
    remove_extra_whitespaces: bool = False    # strip leading/trailing spaces, collapse runs of them
    unk_surface: str = UNK_SURFACE            # what <unk> decodes to (sentencepiece's unk_surface)
    model: str = "llama"                      # tokenizer.ggml.model: "llama" (SPM) or "gpt2"
    merges: Optional[list] = None             # "gpt2": "left right" strings, best first
    pre: Optional[str] = None                 # "gpt2": tokenizer.ggml.pre (xllm.bpe_pre)
    special_ids: dict = field(default_factory=dict)   # other specials: SPECIAL_KEYS name -> id
    add_bos: bool = True                      # tokenizer.ggml.add_bos_token: encode adds BOS
    add_eos: bool = False                     # tokenizer.ggml.add_eos_token
    chat_template: Optional[str] = None       # tokenizer.chat_template, carried into GGUF

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"vocabulary model {self.model!r}, expected one of {list(MODELS)}")
        self.pieces = list(self.pieces)
        self.types = np.asarray(self.types, dtype=np.int32).reshape(-1)
        n = len(self.pieces)
        if n == 0:
            raise ValueError("vocabulary is empty, expected at least one token")
        if self.scores is None and self.model == "llama":
            raise ValueError("a SentencePiece vocabulary needs scores (the merge priorities)")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n_scores = n if self.scores is None else len(self.scores)
        if n_scores != n or len(self.types) != n:
            raise ValueError(f"vocabulary has {n} pieces but {n_scores} scores and "
                             f"{len(self.types)} token types, expected {n} of each")
        if self.model == "gpt2":
            if not self.merges:
                raise ValueError("a byte-level BPE vocabulary needs merges, got none")
            check_pre(self.pre, "vocabulary pre-tokenizer")
        ids = {"bos_id": self.bos_id, "eos_id": self.eos_id, "unk_id": self.unk_id}
        ids.update(self.special_ids)
        for name, value in ids.items():
            if value is None:
                continue
            value = int(value)
            if not 0 <= value < n:
                raise ValueError(f"vocabulary {name} = {value}, expected a token id in [0, {n})")
            if name in ("bos_id", "eos_id", "unk_id"):
                setattr(self, name, value)
            else:
                self.special_ids[name] = value
        unknown_special = sorted(set(self.special_ids) - set(SPECIAL_KEYS))
        if unknown_special:
            raise ValueError(f"vocabulary special ids {unknown_special}, expected names in "
                             f"{sorted(SPECIAL_KEYS)}")
        unknown_types = sorted(set(np.unique(self.types).tolist()) - set(TYPE_NAMES))
        if unknown_types:
            raise ValueError(f"vocabulary has token types {unknown_types}, expected values in "
                             f"{sorted(TYPE_NAMES)} (gguf.TokenType)")
        for i in np.flatnonzero(self.types == BYTE).tolist():
            if not BYTE_PIECE.fullmatch(self.pieces[i]):
                raise ValueError(f"vocabulary token {i} has type BYTE but piece "
                                 f"{self.pieces[i]!r}, expected '<0xNN>'")

    def __len__(self) -> int:
        return len(self.pieces)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        same_scores = (self.scores is None and other.scores is None) or (
            self.scores is not None and other.scores is not None
            and np.array_equal(self.scores, other.scores))
        return (self.pieces == other.pieces and same_scores
                and np.array_equal(self.types, other.types)
                and (self.bos_id, self.eos_id, self.unk_id) == (other.bos_id, other.eos_id, other.unk_id)
                and (self.add_space_prefix, self.remove_extra_whitespaces, self.unk_surface)
                == (other.add_space_prefix, other.remove_extra_whitespaces, other.unk_surface)
                and (self.model, self.merges, self.pre, self.special_ids, self.add_bos,
                     self.add_eos, self.chat_template)
                == (other.model, other.merges, other.pre, other.special_ids, other.add_bos,
                    other.add_eos, other.chat_template))

    def padded(self, n: int) -> "Vocab":
        """This vocabulary grown to `n` tokens the way llama.cpp's converter pads a model whose
        embedding is larger than its tokenizer: '[PAD<id>]', type UNUSED, score -10000."""
        have = len(self.pieces)
        if n < have:
            raise ValueError(f"cannot pad a {have}-token vocabulary to {n} tokens")
        if n == have:
            return self
        pad = range(have, n)
        scores = None if self.scores is None else np.concatenate(
            [self.scores, np.full(len(pad), PAD_SCORE, dtype=np.float32)])
        return dataclasses.replace(
            self, pieces=self.pieces + [f"[PAD{i}]" for i in pad], scores=scores,
            types=np.concatenate([self.types, np.full(len(pad), UNUSED, dtype=np.int32)]),
            special_ids=dict(self.special_ids))

    # --------------------------------------------------------------- readers

    @classmethod
    def from_llama2c(cls, path, vocab_size: Optional[int] = None,
                     remove_extra_whitespaces: bool = False) -> "Vocab":
        """Read a llama2.c `tokenizer.bin`: uint32 max_token_length, then per token a float32
        score, an int32 byte length and the UTF-8 bytes.

        The file does not store the number of tokens: it is the model's vocab_size.  When
        `vocab_size` is None every token up to the end of the file is read.  The file does not
        record sentencepiece's normalizer either: llama2.c keeps spaces as they are, which is
        what Llama 2's tokenizer.model does; a model like tok512.model that strips and
        collapses spaces needs `remove_extra_whitespaces=True` to give sentencepiece's ids.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        if vocab_size is not None and int(vocab_size) <= 0:
            raise ValueError(f"{path}: vocab_size = {vocab_size}, expected a positive token count")
        if len(data) < 4:
            raise ValueError(f"{path}: file is {len(data)} bytes long, too short for a llama2.c "
                             f"tokenizer (expected a 4-byte max_token_length header)")
        (max_len,) = struct.unpack_from("<I", data, 0)
        entry = struct.Struct("<fi")     # score, byte length
        pieces, scores = [], []
        offset = 4
        while True:
            i = len(pieces)
            if (offset == len(data)) if vocab_size is None else (i == vocab_size):
                break
            if offset == len(data):      # clean end of file, but fewer tokens than expected
                raise ValueError(f"{path}: holds {i} tokens, expected {vocab_size} "
                                 f"(the model's vocab_size): tokenizer and model do not match")
            if offset + entry.size > len(data):
                raise ValueError(f"{path}: truncated: token {i} needs an {entry.size}-byte header "
                                 f"at byte {offset}, but the file ends at byte {len(data)}")
            score, length = entry.unpack_from(data, offset)
            offset += entry.size
            if not 0 < length <= max_len:
                raise ValueError(f"{path}: token {i} has byte length {length}, expected 1.."
                                 f"{max_len} (the header's max_token_length): malformed file")
            if offset + length > len(data):
                raise ValueError(f"{path}: truncated: token {i} needs {length} bytes at byte "
                                 f"{offset}, but the file ends at byte {len(data)}")
            raw = data[offset:offset + length]
            offset += length
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}: token {i} is {raw!r}, not valid UTF-8: "
                                 f"malformed file") from None
            pieces.append(text)
            scores.append(score)
        if vocab_size is not None and offset != len(data):
            raise ValueError(f"{path}: holds more than {vocab_size} tokens (the model's "
                             f"vocab_size; {len(data) - offset} bytes left over): "
                             f"tokenizer and model do not match")
        if not pieces:
            raise ValueError(f"{path}: holds no tokens, expected a vocabulary after the header")

        # Back to sentencepiece form: llama2.c's export replaced '▁' by ' ' and wrote BOS/EOS
        # as '\n<s>\n' / '\n</s>\n'; a sentencepiece piece never contains a real space.
        types = np.full(len(pieces), NORMAL, dtype=np.int32)
        ids = {}
        for i, text in enumerate(pieces):
            text = _LLAMA2C_SPECIALS.get(text, text).replace(" ", SPACE)
            pieces[i] = text
            if BYTE_PIECE.fullmatch(text):
                types[i] = BYTE
            elif text in ("<s>", "</s>"):
                types[i] = CONTROL
            elif text == "<unk>":
                types[i] = UNKNOWN
            ids.setdefault(text, i)
        return cls(pieces, np.array(scores, dtype=np.float32), types,
                   bos_id=ids.get("<s>", 1), eos_id=ids.get("</s>", 2), unk_id=ids.get("<unk>", 0),
                   add_space_prefix=True, remove_extra_whitespaces=remove_extra_whitespaces)

    @classmethod
    def from_sentencepiece(cls, path) -> "Vocab":
        """Read a sentencepiece `.model` file."""
        return cls._from_processor(_load_sentencepiece(path), os.fspath(path))

    @classmethod
    def _from_processor(cls, sp, path: str) -> "Vocab":
        n = sp.get_piece_size()
        pieces = [sp.id_to_piece(i) for i in range(n)]
        scores = np.array([sp.get_score(i) for i in range(n)], dtype=np.float32)
        types = np.full(n, NORMAL, dtype=np.int32)
        for i in range(n):
            if sp.is_byte(i):
                types[i] = BYTE
            elif sp.is_control(i):
                types[i] = CONTROL
            elif sp.is_unknown(i):
                types[i] = UNKNOWN
            elif sp.is_unused(i):
                types[i] = UNUSED
        # The Python API does not expose the normalizer spec; its effect is visible:
        # add_dummy_prefix puts '▁' before "a", remove_extra_whitespaces turns " " into "".
        unk = sp.unk_id()
        return cls(pieces, scores, types,
                   bos_id=sp.bos_id() if sp.bos_id() >= 0 else 1,
                   eos_id=sp.eos_id() if sp.eos_id() >= 0 else 2,
                   unk_id=unk if unk >= 0 else 0,
                   add_space_prefix=sp.normalize("a").startswith(SPACE),
                   remove_extra_whitespaces=sp.normalize(" ") == "",
                   unk_surface=sp.decode([unk]) if unk >= 0 else UNK_SURFACE)


    @classmethod
    def from_gguf(cls, reader, path) -> "Vocab":
        """Read the vocabulary embedded in a GGUF file (`reader`: a gguf.GGUFReader or
        xllm.formats.gguf_reader.GGUFFile).  An unknown model or pre-tokenizer is refused
        before the token arrays are looked at."""
        path = os.fspath(path)
        model = _gguf_value(reader, "tokenizer.ggml.model", path, "STRING")
        if model is None:
            raise ValueError(f"{path}: missing GGUF key 'tokenizer.ggml.model', expected one of "
                             f"{list(MODELS)}")
        if model not in MODELS:
            raise ValueError(f"{path}: tokenizer.ggml.model = {model!r}, expected one of "
                             f"{list(MODELS)} ('llama': SentencePiece, 'gpt2': byte-level BPE); "
                             f"this tokenizer type is not supported")
        pre = None
        if model == "gpt2":
            # llama.cpp: a missing pre-tokenizer means 'default' (with a warning)
            pre = _gguf_value(reader, "tokenizer.ggml.pre", path, "STRING") or "default"
            check_pre(pre, f"{path}: tokenizer.ggml.pre")
        pieces = _gguf_value(reader, "tokenizer.ggml.tokens", path, "STRING", array=True)
        if not pieces:
            raise ValueError(f"{path}: missing or empty GGUF key 'tokenizer.ggml.tokens'")
        n = len(pieces)
        scores = _gguf_value(reader, "tokenizer.ggml.scores", path, "FLOAT32", array=True)
        if scores is None and model == "llama":
            raise ValueError(f"{path}: missing GGUF key 'tokenizer.ggml.scores' "
                             f"(the merge priorities of the {n} tokens)")
        types = _gguf_value(reader, "tokenizer.ggml.token_type", path, "INT32", array=True)
        if types is None:            # optional in llama.cpp too: infer like llama2.c does
            types = [BYTE if BYTE_PIECE.fullmatch(p) else CONTROL if p in ("<s>", "</s>")
                     else UNKNOWN if p == "<unk>" else NORMAL for p in pieces]
        for key, values in (("tokenizer.ggml.scores", scores), ("tokenizer.ggml.token_type", types)):
            if values is not None and len(values) != n:
                raise ValueError(f"{path}: {key} has {len(values)} entries, expected {n} "
                                 f"(the length of tokenizer.ggml.tokens)")
        merges = None
        if model == "gpt2":
            merges = _gguf_value(reader, "tokenizer.ggml.merges", path, "STRING", array=True)
            if not merges:
                raise ValueError(f"{path}: missing or empty GGUF key 'tokenizer.ggml.merges' "
                                 f"(a byte-level BPE vocabulary needs its merges)")
        # defaults as llama.cpp's: SPM <unk>=0 <s>=1 </s>=2; byte-level BPE has no defaults here
        defaults = {"bos_id": 1, "eos_id": 2, "unk_id": 0} if model == "llama" else {}
        ids, special_ids = {}, {}
        for key, name in (("tokenizer.ggml.bos_token_id", "bos_id"),
                          ("tokenizer.ggml.eos_token_id", "eos_id"),
                          ("tokenizer.ggml.unknown_token_id", "unk_id"),
                          *((key, name) for name, key in SPECIAL_KEYS.items())):
            value = _gguf_value(reader, key, path, "INT")
            if value is not None and not 0 <= value < n:
                raise ValueError(f"{path}: {key} = {value}, expected a token id in [0, {n})")
            if name in defaults or name.endswith("_id"):
                ids[name] = defaults.get(name) if value is None else value
            elif value is not None:
                special_ids[name] = value
        flags = {}
        for key, name, default in (
                ("tokenizer.ggml.add_space_prefix", "add_space_prefix", model == "llama"),
                ("tokenizer.ggml.remove_extra_whitespaces", "remove_extra_whitespaces", False),
                # llama.cpp: SPM adds BOS; BPE only for some pre-tokenizers (llama3, tekken)
                ("tokenizer.ggml.add_bos_token", "add_bos",
                 True if model == "llama" else PRE_TOKENIZERS[pre].add_bos),
                ("tokenizer.ggml.add_eos_token", "add_eos", False)):
            value = _gguf_value(reader, key, path, "BOOL")
            flags[name] = default if value is None else value
        template = _gguf_value(reader, "tokenizer.chat_template", path, "STRING")
        try:
            return cls(pieces, scores, types, **ids, **flags, model=model, merges=merges,
                       pre=pre, special_ids=special_ids, chat_template=template)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    # --------------------------------------------------------------- writers

    def gguf_fields(self) -> dict:
        """GGUF key -> value of this vocabulary, as llama.cpp's converter writes them.

        Plain Python values; `add_to_gguf(writer)` writes them with the GGUF types llama.cpp
        expects (uint32 ids, bool flags, string/float32/int32 arrays).
        """
        fields = {"tokenizer.ggml.model": self.model}
        if self.model == "gpt2":
            fields["tokenizer.ggml.pre"] = self.pre
        fields["tokenizer.ggml.tokens"] = list(self.pieces)
        if self.scores is not None:
            fields["tokenizer.ggml.scores"] = self.scores.tolist()
        fields["tokenizer.ggml.token_type"] = self.types.tolist()
        if self.model == "gpt2":
            fields["tokenizer.ggml.merges"] = list(self.merges)
        for key, value in (("tokenizer.ggml.bos_token_id", self.bos_id),
                           ("tokenizer.ggml.eos_token_id", self.eos_id),
                           ("tokenizer.ggml.unknown_token_id", self.unk_id)):
            if value is not None:
                fields[key] = value
        for name, value in self.special_ids.items():
            fields[SPECIAL_KEYS[name]] = value
        fields["tokenizer.ggml.add_bos_token"] = bool(self.add_bos)
        fields["tokenizer.ggml.add_eos_token"] = bool(self.add_eos)
        if self.model == "llama":
            fields["tokenizer.ggml.add_space_prefix"] = bool(self.add_space_prefix)
            fields["tokenizer.ggml.remove_extra_whitespaces"] = bool(self.remove_extra_whitespaces)
        if self.chat_template is not None:
            fields["tokenizer.chat_template"] = self.chat_template
        return fields

    def add_to_gguf(self, writer) -> None:
        """Write `gguf_fields()` into a gguf.GGUFWriter with the right value types."""
        from gguf import GGUFValueType
        for key, value in self.gguf_fields().items():
            vtype, sub_type = _GGUF_TYPES[key]
            writer.add_key_value(key, value, GGUFValueType[vtype],
                                 sub_type=GGUFValueType[sub_type] if sub_type else None)


def _gguf_value(reader, key: str, path: str, kind: str, array: bool = False):
    """One tokenizer value of a GGUF file, None when absent; a clear error when mistyped."""
    from gguf import GGUFValueType as T
    field = reader.fields.get(key)
    if field is None:
        return None
    accepted = {"STRING": {T.STRING}, "FLOAT32": {T.FLOAT32, T.FLOAT64}, "BOOL": {T.BOOL},
                "INT32": {T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32},
                "INT": {T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64}}
    found = [T(t).name for t in field.types]
    if array:
        ok = len(field.types) == 2 and field.types[0] == T.ARRAY and field.types[1] in accepted[kind]
        expected = f"an array of {kind}"
    else:
        ok = len(field.types) == 1 and field.types[0] in accepted[kind]
        expected = kind
    if not ok:
        raise ValueError(f"{path}: GGUF key {key!r} has type {'/'.join(found)}, expected {expected}")
    try:
        value = field.contents()
    except (ValueError, IndexError) as exc:   # e.g. a token that is not valid UTF-8
        raise ValueError(f"{path}: GGUF key {key!r} cannot be read ({exc})") from None
    if kind == "BOOL":
        return bool(value)
    if kind in ("INT", "INT32") and not array:
        return int(value)
    return value


def _load_sentencepiece(path):
    import sentencepiece as spm
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file")
    try:
        return spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a sentencepiece model ({first})") from None


