"""SentencePiece's BPE encoder (bpe_model.cc), natively, for "llama" vocabularies.

It does what sentencepiece's BPE model does for these vocabularies (and what llama2.c's run.c
`encode` does): normalize the text (dummy prefix, spaces -> '▁'), split it into characters,
repeatedly merge the adjacent pair whose concatenation is a piece with the highest score
(leftmost on ties), then spell any character that is not a piece as its UTF-8 bytes ('<0xNN>'
tokens).  sentencepiece is the oracle (tests/test_tokenizer.py), and llama.cpp's vocab test
vectors for llama-spm and phi-3 (tests/test_bpe_tokenizer.py).
"""
from __future__ import annotations

import heapq
import re

from .vocab import BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, UNUSED, USER_DEFINED, Vocab


class SpmBPE:
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

