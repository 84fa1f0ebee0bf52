"""Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM ...) on the `tokenizers` library.

Two sources give the same kind of tokenizer:
  - a "gpt2" `Vocab` (from GGUF): `build_tokenizer` assembles a `tokenizers.Tokenizer` the way
    llama.cpp tokenizes it -- the pre-tokenizer splits `tokenizer.ggml.pre` names
    (xllm/bpe_pre.py), GPT-2's byte-to-unicode mapping, a BPE model over the tokens and merges
    (whole-token shortcut where llama.cpp has `ignore_merges`), and CONTROL / USER_DEFINED
    tokens matched whole before any of that (llama.cpp's tokenizer_st_partition);
  - an HF `tokenizer.json`: `load_hf` loads it with `tokenizers.Tokenizer.from_file` and
    derives the `Vocab` llama.cpp's convert_hf_to_gguf.py would write (tokens, token types,
    merges, the pre-tokenizer name found from the hash of its ids for a test text, special ids
    and flags from tokenizer_config.json / special_tokens_map.json / config.json through
    gguf.SpecialVocab).
Decoding does not go through `tokenizers`: `TokenBytes` gives each id's bytes as llama.cpp's
token_to_piece does, so decoding can be streamed one token at a time.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .bpe_pre import CHKHSH, CHKTXT, PRE_TOKENIZERS, check_pre
from .vocab import CONTROL, NORMAL, SPECIAL_KEYS, UNKNOWN, UNUSED, USER_DEFINED, Vocab

HF_FILE = "tokenizer.json"
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "config.json")


def _bytes_to_unicode() -> dict:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the
    other 68 bytes for U+0100.. in order ('Ġ' is the space, 'Ċ' the newline)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
# str.translate table back to bytes (as Latin-1 characters); characters outside the alphabet
# that Latin-1 could still encode are sent to U+10FFFF so that the encode fails for them
_CHAR_TO_BYTE = {ord(c): chr(b) for b, c in BYTE_TO_CHAR.items()}
_CHAR_TO_BYTE.update({c: "\U0010ffff" for c in range(0x80, 0x100) if c not in _CHAR_TO_BYTE})


class TokenBytes:
    """What each id decodes to, as llama.cpp's token_to_piece (special=false) gives it: NORMAL
    tokens mapped back from the byte alphabet, USER_DEFINED tokens as their raw text, CONTROL
    and other tokens nothing.  A NORMAL token with characters outside the alphabet is taken
    as raw text (as `tokenizers`' ByteLevel decoder does).  Computed per id on first use, so
    a large vocabulary costs nothing at load."""

    def __init__(self, vocab: Vocab):
        self._pieces = vocab.pieces
        self._types = vocab.types.tolist()
        self._cache = [None] * len(vocab.pieces)

    def __len__(self) -> int:
        return len(self._cache)

    def __getitem__(self, i: int) -> bytes:
        out = self._cache[i]
        if out is None:
            piece, kind = self._pieces[i], self._types[i]
            if kind == NORMAL:
                try:
                    out = piece.translate(_CHAR_TO_BYTE).encode("latin-1")
                except UnicodeEncodeError:
                    out = piece.encode("utf-8")
            else:
                out = piece.encode("utf-8") if kind == USER_DEFINED else b""
            self._cache[i] = out
        return out


# ----------------------------------------------------------------------------- from a Vocab

def build_tokenizer(vocab: Vocab):
    """A `tokenizers.Tokenizer` encoding like llama.cpp does for this "gpt2" vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    spec = PRE_TOKENIZERS[vocab.pre]
    pieces = vocab.pieces
    if "" in pieces:                   # llama.cpp renames empty tokens the same way
        pieces = [p or f"[EMPTY_{i}]" for i, p in enumerate(pieces)]
    token_ids = dict(zip(pieces, range(len(pieces))))     # a repeated token: the last id wins
    pairs = _merge_pairs(vocab.merges)
    try:
        model = models.BPE(token_ids, pairs, ignore_merges=spec.ignore_merges)
    except Exception as exc:           # the library raises a bare Exception on a bad merge
        raise ValueError(f"the merges do not fit the tokens: {exc}") from None
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), "isolated") for r in spec.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = vocab.types
    special = np.flatnonzero((types == CONTROL) | (types == UNKNOWN)).tolist()
    user = np.flatnonzero(types == USER_DEFINED).tolist()
    # special: matched only when encode parses specials; user-defined: always (llama.cpp)
    tok.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in special])
    tok.add_tokens([AddedToken(pieces[i], special=False, normalized=False) for i in user])
    return tok


def _merge_pairs(merges: list) -> list:
    """[(left, right)] of "left right" merges.  Byte-level tokens hold neither a space nor a
    newline (both are spelled in the byte alphabet), so the whole list is split in two C
    calls; a list that does not split into exactly two tokens per merge is walked to name the
    bad one."""
    flat = "\n".join(merges).replace(" ", "\n").split("\n")
    if len(flat) == 2 * len(merges):
        it = iter(flat)
        return list(zip(it, it))
    for i, merge in enumerate(merges):
        if len(merge.replace("\n", " ").split(" ")) != 2:
            raise ValueError(f"merge {i} is {merge!r}, expected two tokens separated by a space")
    raise AssertionError("unreachable: every merge splits in two")


# ----------------------------------------------------------------------------- from tokenizer.json

def hf_json_path(path) -> str:
    """The tokenizer.json of `path` (the file itself, or the one in a directory)."""
    path = os.fspath(path)
    file = os.path.join(path, HF_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such tokenizer file")
    return file


def load_hf(path):
    """(tokenizers.Tokenizer, Vocab) of an HF tokenizer.json, a file or the directory holding
    it (whose tokenizer_config.json, special_tokens_map.json and config.json are read too)."""
    from tokenizers import Tokenizer
    file = hf_json_path(path)
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a JSON file ({exc})") from None
    _check_byte_level(file, data)
    try:
        hf = Tokenizer.from_file(file)
    except Exception as exc:           # the library raises a bare Exception
        raise ValueError(f"{file}: the tokenizers library cannot read it ({exc})") from None
    return hf, vocab_from_hf(hf, data, file)


def _check_byte_level(file: str, data) -> None:
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        raise ValueError(f"{file}: model type {kind!r}, expected 'BPE' (only byte-level BPE "
                         f"tokenizer.json files are supported; a SentencePiece model needs its "
                         f"tokenizer.model)")
    if not isinstance(model.get("merges"), list) or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{file}: the BPE model has no merges list or vocab object")
    parts = [data.get("pre_tokenizer"), data.get("decoder")]
    found = set()
    while parts:
        part = parts.pop()
        if isinstance(part, dict):
            found.add(part.get("type"))
            parts.extend(v for v in part.values() if isinstance(v, (dict, list)))
        elif isinstance(part, list):
            parts.extend(part)
    if "ByteLevel" not in found:
        raise ValueError(f"{file}: pre-tokenizer/decoder types {sorted(map(str, found - {None}))} "
                         f"have no 'ByteLevel': only byte-level BPE tokenizers are supported "
                         f"(a SentencePiece model needs its tokenizer.model)")


def detect_pre(hf) -> tuple:
    """(tokenizer.ggml.pre name or None, chkhsh) as convert_hf_to_gguf.py finds them."""
    ids = hf.encode(CHKTXT, add_special_tokens=True).ids
    chkhsh = hashlib.sha256(str(ids).encode()).hexdigest()
    return CHKHSH.get(chkhsh), chkhsh


def looks_special(text: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens that are CONTROL even
    when tokenizer.json does not mark them special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


def vocab_from_hf(hf, data: dict, file: str) -> Vocab:
    """The "gpt2" Vocab convert_hf_to_gguf.py writes for this tokenizer (its get_vocab_base
    and gguf.SpecialVocab)."""
    pre, chkhsh = detect_pre(hf)
    if pre is None:
        raise ValueError(f"{file}: its pre-tokenizer is not one llama.cpp knows (the ids of "
                         f"convert_hf_to_gguf.py's test text hash to {chkhsh}); supported: "
                         f"{', '.join(sorted(PRE_TOKENIZERS))}")
    check_pre(pre, f"{file}: pre-tokenizer")
    table = hf.get_vocab(with_added_tokens=True)
    n = max(table.values()) + 1
    pieces = [None] * n
    for text, i in table.items():
        pieces[i] = text
    types = np.full(n, NORMAL, dtype=np.int32)
    if None in pieces:                 # ids no token has: llama.cpp's filler
        for i in [i for i, p in enumerate(pieces) if p is None]:
            pieces[i], types[i] = f"[PAD{i}]", UNUSED
    for i, added in hf.get_added_tokens_decoder().items():
        if added.special or looks_special(added.content):
            types[i] = CONTROL
        else:                          # pre-normalized as the converter writes them
            types[i] = USER_DEFINED
            pieces[i] = added.content.replace("\u2581", " ")
    merges = data["model"]["merges"]
    if merges and not isinstance(merges[0], str):   # [left, right] pairs (transformers >= 4.45)
        merges = [f"{a.replace(' ', 'Ġ')} {b.replace(' ', 'Ġ')}" for a, b in merges]
    ids, add, template = _special_ids(hf, os.path.dirname(os.path.abspath(file)), n)
    special = {name: ids[name] for name in SPECIAL_KEYS if name in ids}
    try:
        return Vocab(pieces, None, types, bos_id=ids.get("bos"), eos_id=ids.get("eos"),
                     unk_id=ids.get("unk"), add_space_prefix=False, model="gpt2",
                     merges=list(merges), pre=pre, special_ids=special,
                     add_bos=add.get("bos", PRE_TOKENIZERS[pre].add_bos),
                     add_eos=add.get("eos", False), chat_template=template)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


def _special_ids(hf, directory: str, n: int) -> tuple:
    """({bos, eos, unk, pad, ...: id}, {bos, eos: add flag}, chat template) from the files
    beside tokenizer.json, as gguf.SpecialVocab reads them for llama.cpp's converter; then
    special_tokens_map.json for the names still missing."""
    from gguf import SpecialVocab
    try:
        sv = SpecialVocab(directory, load_merges=False, n_vocab=n)
    except (ValueError, AttributeError, TypeError) as exc:   # malformed JSON beside it
        raise ValueError(f"{directory}: cannot read the tokenizer's config files "
                         f"{list(_CONFIG_FILES)} ({exc})") from None
    ids = dict(sv.special_token_ids)
    path = os.path.join(directory, "special_tokens_map.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                mapping = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not a JSON file ({exc})") from None
        for name in ("bos", "eos", "unk", "pad", "sep", "mask"):
            entry = mapping.get(f"{name}_token") if isinstance(mapping, dict) else None
            text = entry.get("content") if isinstance(entry, dict) else entry
            if name not in ids and isinstance(text, str) and hf.token_to_id(text) is not None:
                ids[name] = hf.token_to_id(text)
    template = sv.chat_template if isinstance(sv.chat_template, str) else None
    return ids, dict(sv.add_special_token), template
