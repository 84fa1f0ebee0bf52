"""Tokenizers for LLaMA-family models: sentencepiece, or a native SPM-style BPE.

A vocabulary (`Vocab`) is kept in sentencepiece form whatever file it came from: pieces use
'▁' (U+2581) for a space, byte tokens are '<0xNN>', the specials are '<unk>', '<s>', '</s>'.
It can be read from a sentencepiece `.model`, a llama2.c `tokenizer.bin` or a GGUF file, and
written back into GGUF (`Vocab.gguf_fields` / `Vocab.add_to_gguf`).

`Tokenizer` gives one interface over two backends:
  - "sentencepiece": a `.model` file, encoded by sentencepiece itself;
  - "native": any `Vocab`, encoded by `_BPE` below, which does what sentencepiece's BPE model
    does for these vocabularies (and what llama2.c's run.c `encode` does): normalize the text
    (dummy prefix, spaces -> '▁'), split it into characters, repeatedly merge the adjacent pair
    whose concatenation is a piece with the highest score (leftmost on ties), then spell any
    character that is not a piece as its UTF-8 bytes ('<0xNN>' tokens).
Both decode with the same code (`StreamDecoder`), which follows sentencepiece's `Decode`:
control tokens are invisible, the first piece of the text loses its leading space, and runs
of byte tokens are assembled into UTF-8 (an invalid byte becomes U+FFFD).

sentencepiece is the oracle: tests/test_tokenizer.py checks that both backends give its ids
and its decoded text on a unicode corpus, for the 512- and the 32000-token vocabularies.
"""
from __future__ import annotations

import heapq
import operator
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np

SPACE = "\u2581"                 # '▁': how sentencepiece writes a space inside a piece
UNK_SURFACE = " \u2047 "         # sentencepiece's default text for <unk> (" ⁇ ")
REPLACEMENT = "\ufffd"           # what an invalid UTF-8 byte decodes to

# Token types, the values of gguf.TokenType (and of sentencepiece's ModelProto piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "NORMAL", UNKNOWN: "UNKNOWN", CONTROL: "CONTROL",
              USER_DEFINED: "USER_DEFINED", UNUSED: "UNUSED", BYTE: "BYTE"}

_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")   # sentencepiece spells byte pieces "<0x%02X>"

# llama2.c's export writes BOS/EOS this way (run.c prints them on their own line).
_LLAMA2C_SPECIALS = {"\n<s>\n": "<s>", "\n</s>\n": "</s>"}

# GGUF value types of the tokenizer keys `Vocab.gguf_fields` returns (key -> (type, element
# type)), as llama.cpp reads them: ids are uint32, flags bool, token_type an int32 array.
_GGUF_TYPES = {
    "tokenizer.ggml.model": ("STRING", None),
    "tokenizer.ggml.tokens": ("ARRAY", "STRING"),
    "tokenizer.ggml.scores": ("ARRAY", "FLOAT32"),
    "tokenizer.ggml.token_type": ("ARRAY", "INT32"),
    "tokenizer.ggml.bos_token_id": ("UINT32", None),
    "tokenizer.ggml.eos_token_id": ("UINT32", None),
    "tokenizer.ggml.unknown_token_id": ("UINT32", None),
    "tokenizer.ggml.add_bos_token": ("BOOL", None),
    "tokenizer.ggml.add_eos_token": ("BOOL", None),
    "tokenizer.ggml.add_space_prefix": ("BOOL", None),
    "tokenizer.ggml.remove_extra_whitespaces": ("BOOL", None),
}


# ----------------------------------------------------------------------------- Vocab

@dataclass
class Vocab:
    """A SentencePiece vocabulary: what the native tokenizer needs, whatever the source file."""
    pieces: list[str]             # one per id, sentencepiece form ('▁' for space, '<0xNN>' bytes)
    scores: np.ndarray            # float32 [n]: merge priority, higher merges first
    types: np.ndarray             # int32 [n]: NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
    bos_id: int = 1               # <s>, prepended by encode(bos=True)
    eos_id: int = 2               # </s>
    unk_id: int = 0               # <unk>, for a character with no piece and no byte tokens
    add_space_prefix: bool = True             # sentencepiece's add_dummy_prefix: text starts with '▁'
    remove_extra_whitespaces: bool = False    # strip leading/trailing spaces, collapse runs of them
    unk_surface: str = UNK_SURFACE            # what <unk> decodes to (sentencepiece's unk_surface)

    def __post_init__(self):
        self.pieces = list(self.pieces)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.types = np.asarray(self.types, dtype=np.int32).reshape(-1)
        n = len(self.pieces)
        if n == 0:
            raise ValueError("vocabulary is empty, expected at least one token")
        if len(self.scores) != n or len(self.types) != n:
            raise ValueError(f"vocabulary has {n} pieces but {len(self.scores)} scores and "
                             f"{len(self.types)} token types, expected {n} of each")
        for name in ("bos_id", "eos_id", "unk_id"):
            value = int(getattr(self, name))
            if not 0 <= value < n:
                raise ValueError(f"vocabulary {name} = {value}, expected a token id in [0, {n})")
            setattr(self, name, value)
        unknown_types = sorted(set(np.unique(self.types).tolist()) - set(TYPE_NAMES))
        if unknown_types:
            raise ValueError(f"vocabulary has token types {unknown_types}, expected values in "
                             f"{sorted(TYPE_NAMES)} (gguf.TokenType)")
        for i in np.flatnonzero(self.types == BYTE).tolist():
            if not _BYTE_PIECE.fullmatch(self.pieces[i]):
                raise ValueError(f"vocabulary token {i} has type BYTE but piece "
                                 f"{self.pieces[i]!r}, expected '<0xNN>'")

    def __len__(self) -> int:
        return len(self.pieces)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (self.pieces == other.pieces and np.array_equal(self.scores, other.scores)
                and np.array_equal(self.types, other.types)
                and (self.bos_id, self.eos_id, self.unk_id) == (other.bos_id, other.eos_id, other.unk_id)
                and (self.add_space_prefix, self.remove_extra_whitespaces, self.unk_surface)
                == (other.add_space_prefix, other.remove_extra_whitespaces, other.unk_surface))

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
            if _BYTE_PIECE.fullmatch(text):
                types[i] = BYTE
            elif text in ("<s>", "</s>"):
                types[i] = CONTROL
            elif text == "<unk>":
                types[i] = UNKNOWN
            ids.setdefault(text, i)
        try:
            return cls(pieces, np.array(scores, dtype=np.float32), types,
                       bos_id=ids.get("<s>", 1), eos_id=ids.get("</s>", 2), unk_id=ids.get("<unk>", 0),
                       add_space_prefix=True, remove_extra_whitespaces=remove_extra_whitespaces)
        except ValueError as exc:          # e.g. a one-token file has no room for bos_id 1
            raise ValueError(f"{path}: {exc}") from None

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
        """Read the vocabulary embedded in a GGUF file (`reader`: formats.gguf_reader.GGUFFile)."""
        path = os.fspath(path)
        model = _gguf_value(reader, "tokenizer.ggml.model", path, "STRING")
        if model is None:
            raise ValueError(f"{path}: missing GGUF key 'tokenizer.ggml.model', expected 'llama'")
        if model != "llama":
            raise ValueError(f"{path}: tokenizer.ggml.model = {model!r}, expected 'llama' "
                             f"(SentencePiece BPE); this tokenizer type is not supported")
        pieces = _gguf_value(reader, "tokenizer.ggml.tokens", path, "STRING", array=True)
        if not pieces:
            raise ValueError(f"{path}: missing or empty GGUF key 'tokenizer.ggml.tokens'")
        n = len(pieces)
        scores = _gguf_value(reader, "tokenizer.ggml.scores", path, "FLOAT32", array=True)
        if scores is None:
            raise ValueError(f"{path}: missing GGUF key 'tokenizer.ggml.scores' "
                             f"(the merge priorities of the {n} tokens)")
        types = _gguf_value(reader, "tokenizer.ggml.token_type", path, "INT32", array=True)
        if types is None:            # optional in llama.cpp too: infer like llama2.c does
            types = [BYTE if _BYTE_PIECE.fullmatch(p) else CONTROL if p in ("<s>", "</s>")
                     else UNKNOWN if p == "<unk>" else NORMAL for p in pieces]
        for key, values in (("tokenizer.ggml.scores", scores), ("tokenizer.ggml.token_type", types)):
            if len(values) != n:
                raise ValueError(f"{path}: {key} has {len(values)} entries, expected {n} "
                                 f"(the length of tokenizer.ggml.tokens)")
        ids = {}
        for key, name, default in (("tokenizer.ggml.bos_token_id", "bos_id", 1),
                                   ("tokenizer.ggml.eos_token_id", "eos_id", 2),
                                   ("tokenizer.ggml.unknown_token_id", "unk_id", 0)):
            value = _gguf_value(reader, key, path, "INT")
            value = default if value is None else value
            if not 0 <= value < n:
                raise ValueError(f"{path}: {key} = {value}, expected a token id in [0, {n})")
            ids[name] = value
        flags = {}
        for key, name, default in (("tokenizer.ggml.add_space_prefix", "add_space_prefix", True),
                                   ("tokenizer.ggml.remove_extra_whitespaces",
                                    "remove_extra_whitespaces", False)):
            value = _gguf_value(reader, key, path, "BOOL")
            flags[name] = default if value is None else value
        try:
            return cls(pieces, scores, types, **ids, **flags)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    # --------------------------------------------------------------- writers

    def gguf_fields(self) -> dict:
        """GGUF key -> value of this vocabulary, as llama.cpp's converter writes them.

        Plain Python values; `add_to_gguf(writer)` writes them with the GGUF types llama.cpp
        expects (uint32 ids, bool flags, string/float32/int32 arrays).
        """
        return {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": list(self.pieces),
            "tokenizer.ggml.scores": self.scores.tolist(),
            "tokenizer.ggml.token_type": self.types.tolist(),
            "tokenizer.ggml.bos_token_id": self.bos_id,
            "tokenizer.ggml.eos_token_id": self.eos_id,
            "tokenizer.ggml.unknown_token_id": self.unk_id,
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False,
            "tokenizer.ggml.add_space_prefix": bool(self.add_space_prefix),
            "tokenizer.ggml.remove_extra_whitespaces": bool(self.remove_extra_whitespaces),
        }

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


# ----------------------------------------------------------------------------- native BPE

class _BPE:
    """SentencePiece's BPE encoder (bpe_model.cc) for one `Vocab`.

    Merging uses a heap of candidate pairs over a linked list of symbols: O(n log n) in the
    text length.  No piece of a LLaMA vocabulary contains '▁' after another character, so no
    merge crosses the start of a word ('▁' run + the characters after it): each word is
    merged alone and its ids cached, which makes long natural text cheap.  A vocabulary
    without that property is merged as one sequence (same result, no cache).
    """

    CACHE_LIMIT = 1 << 16          # words kept in the cache before it is cleared

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        types = vocab.types.tolist()
        scores = vocab.scores.tolist()
        # Pieces a merge may produce: sentencepiece's `pieces_` (normal, user-defined, unused).
        # Control, unknown and byte pieces are reserved: typing "<s>" does not make BOS.
        self.merge_score = {}      # piece -> score
        self.piece_id = {}         # piece -> id, reserved pieces first as PieceToId does
        for p, t, s in zip(vocab.pieces, types, scores):
            if t in (NORMAL, USER_DEFINED, UNUSED):
                self.merge_score.setdefault(p, s)
        for i, (p, t) in enumerate(zip(vocab.pieces, types)):
            if t in (CONTROL, UNKNOWN, BYTE):
                self.piece_id.setdefault(p, i)
        for i, (p, t) in enumerate(zip(vocab.pieces, types)):
            if t in (NORMAL, USER_DEFINED, UNUSED):
                self.piece_id.setdefault(p, i)
        self.unused = {p for p, t in zip(vocab.pieces, types) if t == UNUSED}
        # id of the byte token for each byte value; unk when the vocabulary lacks it
        self.byte_id = [self.piece_id.get(f"<0x{b:02X}>", vocab.unk_id) for b in range(256)]
        for b in range(256):
            if types[self.byte_id[b]] != BYTE:
                self.byte_id[b] = vocab.unk_id
        # without byte tokens a character with no piece is one <unk>, as in sentencepiece
        self.byte_fallback = BYTE in types
        # User-defined pieces are matched whole (longest first) and never merged further.
        user = sorted({p for p, t in zip(vocab.pieces, types) if t == USER_DEFINED and p},
                      key=len, reverse=True)
        self.user_re = re.compile("|".join(map(re.escape, user))) if user else None
        self.user_id = {p: self.piece_id[p] for p in user}
        # Can words be merged separately?  Only if no piece holds '▁' after another character.
        self.split_words = not any(re.search(f"[^{SPACE}]{SPACE}", p) for p in self.merge_score)
        self.cache = {}            # word -> tuple of ids

    def normalize(self, text: str) -> str:
        """sentencepiece's normalizer for LLaMA vocabularies (identity rule): spaces -> '▁',
        a leading '▁' (dummy prefix), and optionally extra spaces removed."""
        v = self.vocab
        if v.remove_extra_whitespaces:
            text = re.sub(" {2,}", " ", text.lstrip(" "))
        if not text:
            return ""
        out = (SPACE if v.add_space_prefix else "") + text.replace(" ", SPACE)
        if v.remove_extra_whitespaces:       # sentencepiece trims after escaping
            out = out.rstrip(SPACE)
        return out

    def encode(self, text: str) -> list:
        """Token ids of `text` (no BOS/EOS)."""
        normalized = self.normalize(text)
        ids = []
        if self.user_re is None:
            self._encode_run(normalized, ids)
            return ids
        start = 0
        for m in self.user_re.finditer(normalized):
            self._encode_run(normalized[start:m.start()], ids)
            ids.append(self.user_id[m.group()])
            start = m.end()
        self._encode_run(normalized[start:], ids)
        return ids

    def _encode_run(self, run: str, ids: list) -> None:
        if not run:
            return
        if not self.split_words:
            ids.extend(self._encode_word(run))
            return
        cache = self.cache
        if len(cache) > self.CACHE_LIMIT:
            cache.clear()
        # a word: a run of '▁' and the characters up to the next '▁'
        for word in re.findall(f"{SPACE}*[^{SPACE}]+|{SPACE}+", run):
            cached = cache.get(word)
            if cached is None:
                cached = cache[word] = tuple(self._encode_word(word))
            ids.extend(cached)

    def _encode_word(self, word: str) -> list:
        """Merge the characters of `word` as sentencepiece does; return the ids."""
        merge_score = self.merge_score
        sym = list(word)                 # text of each symbol; '' once merged into its left
        n = len(sym)
        nxt = list(range(1, n + 1))      # next live symbol, n = none
        prv = list(range(-1, n - 1))     # previous live symbol, -1 = none
        rev_merge = {}                   # unused piece -> the pair it was made of
        unused = self.unused
        # candidate pairs: (-score, left, right, length of the merged text); the heap pops the
        # highest score, then the leftmost pair, which is sentencepiece's order
        heap = []
        for i in range(n - 1):
            s = merge_score.get(sym[i] + sym[i + 1])
            if s is not None:
                heap.append((-s, i, i + 1, 2))
                if unused and sym[i] + sym[i + 1] in unused:
                    rev_merge[sym[i] + sym[i + 1]] = (sym[i], sym[i + 1])
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = sym[left], sym[right]
            if not a or not b or len(a) + len(b) != size:
                continue                 # stale: one side was merged since this was pushed
            sym[left] = a + b
            sym[right] = ""
            after = nxt[left] = nxt[right]
            if after < n:
                prv[after] = left
            before = prv[left]
            # the merged symbol may now pair with its neighbours
            for l, r in ((before, left), (left, after)):
                if l < 0 or r >= n:
                    continue
                pair = sym[l] + sym[r]
                s = merge_score.get(pair)
                if s is not None:
                    heapq.heappush(heap, (-s, l, r, len(pair)))
                    if unused and pair in unused:
                        rev_merge[pair] = (sym[l], sym[r])
        ids = []
        for s in sym:
            if s:
                self._emit(s, rev_merge, ids)
        return ids

    def _emit(self, piece: str, rev_merge: dict, ids: list) -> None:
        """Append the id of a merged symbol: unused pieces are split back into the pair that
        made them, characters with no piece become their UTF-8 byte tokens."""
        i = self.piece_id.get(piece)
        if piece in rev_merge:               # only unused pieces are recorded there
            left, right = rev_merge[piece]
            self._emit(left, rev_merge, ids)
            self._emit(right, rev_merge, ids)
        elif i is not None:
            ids.append(i)
        elif self.byte_fallback:
            ids.extend(self.byte_id[b] for b in piece.encode("utf-8"))
        else:
            ids.append(self.vocab.unk_id)


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
                self.byte[i] = int(_BYTE_PIECE.fullmatch(p).group(1), 16)
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


# ----------------------------------------------------------------------------- Tokenizer

class Tokenizer:
    """Encode text to token ids and back, with sentencepiece or the native BPE."""

    def __init__(self, vocab: Vocab, sp=None, path: Optional[str] = None):
        self.vocab = vocab                 # the vocabulary, in sentencepiece form
        self.path = path                   # file it was read from, if any
        self._sp = sp                      # sentencepiece processor, None for the native backend
        self._bpe = None if sp is not None else _BPE(vocab)   # native encoder
        self._tables = _DecodeTables(vocab)    # decoding data shared by every StreamDecoder

    @classmethod
    def from_file(cls, path, vocab_size: Optional[int] = None) -> "Tokenizer":
        """A `.model` file -> sentencepiece; a GGUF file -> its embedded vocabulary (native);
        anything else is read as a llama2.c tokenizer.bin (native).  `vocab_size`, when
        given, is the model's: the file must hold exactly that many tokens."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such tokenizer file")
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a directory, expected a tokenizer file "
                             f"(tokenizer.model or a llama2.c tokenizer.bin)")
        if path.endswith(".model"):
            sp = _load_sentencepiece(path)
            vocab = Vocab._from_processor(sp, path)
            tok = cls(vocab, sp=sp, path=path)
        else:
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic == b"GGUF":
                from .formats.gguf_reader import GGUFFile   # every count bounded by the file size
                reader = GGUFFile(path)
                if "tokenizer.ggml.tokens" not in reader.fields:
                    raise ValueError(f"{path}: GGUF file has no embedded vocabulary "
                                     f"(no 'tokenizer.ggml.tokens')")
                vocab = Vocab.from_gguf(reader, path)
            else:
                vocab = Vocab.from_llama2c(path, vocab_size)
            tok = cls(vocab, path=path)
        if vocab_size is not None and tok.vocab_size != vocab_size:
            raise ValueError(f"{path}: holds {tok.vocab_size} tokens, expected {vocab_size} "
                             f"(the model's vocab_size): tokenizer and model do not match")
        return tok

    @classmethod
    def from_vocab(cls, vocab: Vocab) -> "Tokenizer":
        """The native BPE over `vocab` (from a GGUF file or anywhere else)."""
        return cls(vocab)

    @property
    def backend(self) -> str:
        return "sentencepiece" if self._sp is not None else "native"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab.pieces)

    @property
    def bos_id(self) -> int:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int:
        return self.vocab.eos_id

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list:
        """Token ids of `text`, with BOS first (and EOS last) if asked.  "" -> [BOS]."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids = self._sp.encode(text) if self._sp is not None else self._bpe.encode(text)
        if bos:
            ids.insert(0, self.vocab.bos_id)
        if eos:
            ids.append(self.vocab.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, as sentencepiece's decode gives it."""
        stream = StreamDecoder(self)
        parts = [stream.push(i) for i in ids]
        parts.append(stream.flush())
        return "".join(parts)

    def stream_decoder(self, context: Iterable[int] = ()) -> StreamDecoder:
        """A decoder for ids arriving one by one.  `context`: ids already shown (e.g. BOS and
        the prompt), so the first new piece keeps its leading space."""
        return StreamDecoder(self, context)

    def __repr__(self) -> str:
        return f"Tokenizer({self.backend}, {self.vocab_size} tokens, path={self.path!r})"


def load_tokenizer(source: Union[str, os.PathLike, Vocab, Tokenizer],
                   vocab_size: Optional[int] = None) -> Tokenizer:
    """A Tokenizer from a file path, a Vocab (native backend) or a Tokenizer (returned as is)."""
    if isinstance(source, Tokenizer):
        return source
    if isinstance(source, Vocab):
        return Tokenizer.from_vocab(source)
    return Tokenizer.from_file(source, vocab_size)
