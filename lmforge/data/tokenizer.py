"""Tokenizers: byte-level BPE (HF `tokenizers`), character level with byte fallback, and any
Hugging Face tokenizer.json taken over with an imported model.

The trained kinds round-trip any Unicode string exactly: decode(encode(s)) == s.  A tokenizer is
saved as ONE JSON file, {"lmforge": {...metadata...}, ...payload...}, so a run directory needs
nothing else to rebuild it, and its fingerprint (a hash of that content) can key caches of
encoded data.  `hf_json()` gives the Hugging Face tokenizer.json that encodes exactly as lmforge
does, for export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_bytes as write_atomic
from lmforge.config import TokenizerConfig
from lmforge.errors import DataError

EOT_TOKEN = "<|endoftext|>"
FORMAT_VERSION = 1
# Metadata fields (in the file's "lmforge" section) written by `with_special_tokens`.
SPECIAL_TOKENS_FIELD = "special_tokens"
CHAT_TEMPLATE_FIELD = "chat_template"
KINDS = ("bpe", "char", "hf")
CJK_SPLITS = ("char", "jieba", "none")
PRETOKENIZERS = ("lmforge", "gpt2", "llama3", "qwen2")
MIN_BPE_VOCAB = 257  # the 256 byte symbols plus the end-of-text token

# Pieces longer than this are cut (at a space when possible).  HF encodes one piece on one
# thread and keeps offsets for all of it, so a huge unbroken "line" is both slow and memory
# hungry; the cut changes tokenization only at that point and round trips stay exact.
MAX_PIECE_CHARS = 16_384

# Blocks of Han ideographs, kana, hangul, bopomofo, CJK punctuation and fullwidth forms.
# Ranges are written as literal characters so the same class works in Python `re` (jieba
# mode) and in the Oniguruma regex that HF serializes into the tokenizer file ("char" mode).
_CJK_RANGES = (
    (0x1100, 0x11FF),  # hangul jamo
    (0x2E80, 0x2FFF),  # radicals, kangxi, ideographic description
    (0x3000, 0x9FFF),  # CJK punctuation, kana, bopomofo, compatibility, ext. A, unified
    (0xA960, 0xA97F),  # hangul jamo ext. A
    (0xAC00, 0xD7FF),  # hangul syllables, jamo ext. B (stops before the surrogates)
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms
    (0x20000, 0x323AF),  # ideograph extensions B to H and compatibility supplement
)
CJK_CLASS = "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _CJK_RANGES) + "]"
_CJK_RUN_RE = re.compile(CJK_CLASS + "+")
# A piece is a line with the run of newlines that ends it, so "\n\n" can be learned as a token.
_PIECE_PATTERN = r"[^\n]*\n+|[^\n]+"
_PIECE_RE = re.compile(_PIECE_PATTERN)
# Unicode White_Space, spelled out so Python and the Oniguruma regex of an exported tokenizer.json
# agree (Python's \s also takes \x1c-\x1f, Oniguruma's does not).
_SPACE_CLASS = "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_SPACE_RE = re.compile(_SPACE_CLASS)

# The word rules of the exportable pre-tokenizers, as llama.cpp implements them (its "llama-bpe" and
# "qwen2"): contractions spelled with explicit case pairs rather than (?i:...), which in Oniguruma
# would also fold characters such as U+017F into "s".
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
PRETOKENIZER_REGEX = {
    "llama3": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
# Where text can be cut into independently encoded chunks without changing a single pre-token
# (so long documents encode in parallel and in bounded memory): for llama3/qwen2 after a newline
# that a non-space follows (no word rule spans that point), for GPT-2's rule before a newline
# that follows a non-space.
_SAFE_CUT = {
    "gpt2": re.compile(r"(?<=\S)(?=\n)"),
    "llama3": re.compile(r"(?<=\n)(?=\S)"),
    "qwen2": re.compile(r"(?<=\n)(?=\S)"),
}
# The name llama.cpp (tokenizer.ggml.pre) gives each exportable rule.
LLAMA_CPP_PRE = {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2"}
_TRAIN_BATCH = 1000  # pieces per batch handed to the HF trainer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Tokenizer:
    """Common interface; `train_tokenizer` and `Tokenizer.load` return a concrete kind."""

    kind: str
    vocab_size: int  # size of the id space (embedding rows needed)
    eot_id: int  # end-of-text id placed between documents

    def __init__(self, payload: dict[str, Any]) -> None:
        # The payload is exactly what save() writes; keeping it (rather than re-serializing the
        # live objects) makes fingerprint() identical before and after a save/load cycle.
        self._blob = _canonical_json(payload)
        meta = payload["lmforge"]
        # Special tokens beyond <|endoftext|> (e.g. a chat template's role markers): ids after the
        # trained vocabulary, never produced by encode() from text, dropped by decode().
        self.special_tokens: list[str] = list(meta.get(SPECIAL_TOKENS_FIELD, []))
        # A Jinja chat template in the Hugging Face convention, stored with the tokenizer so that
        # an export carries it (tokenizer_config.json's "chat_template"); None before `lmforge sft`.
        self.chat_template: str | None = meta.get(CHAT_TEMPLATE_FIELD)

    @property
    def special_ids(self) -> dict[str, int]:
        """{token: id} of the special tokens other than <|endoftext|>."""
        return dict(self._special_ids)

    def with_special_tokens(self, tokens: list[str], chat_template: str | None = None) -> Tokenizer:
        """A copy with `tokens` appended to the vocabulary as special tokens and, when given, the
        chat template stored in the metadata. Tokens already present keep their ids."""
        payload = json.loads(self._blob.decode("utf-8"))
        meta = payload["lmforge"]
        specials = list(meta.get(SPECIAL_TOKENS_FIELD, []))
        new = [t for t in dict.fromkeys(tokens) if t not in specials and t != EOT_TOKEN]
        meta[SPECIAL_TOKENS_FIELD] = specials + new
        if chat_template is not None:
            meta[CHAT_TEMPLATE_FIELD] = chat_template
        self._add_to_payload(payload, new)
        return _from_blob(_canonical_json(payload), "<tokenizer with special tokens>")

    def _add_to_payload(self, payload: dict[str, Any], tokens: list[str]) -> None:
        """Record new special tokens in the kind's own payload (where its ids come from)."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The raw UTF-8 bytes a single id stands for (b"" for end-of-text); may be a partial character."""
        raise NotImplementedError

    def hf_json(self) -> dict[str, Any]:
        """A Hugging Face tokenizer.json that encodes every text to the same ids (for export).

        Raises DataError, naming the setting, when this tokenizer has no exact equivalent."""
        raise NotImplementedError

    def hf_config(self) -> dict[str, Any] | None:
        """The tokenizer_config.json an imported tokenizer came with (None for lmforge's own)."""
        return None

    def save(self, path: str | Path) -> None:
        write_atomic(Path(path), self._blob)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise DataError(
                f"tokenizer file {path} does not exist; train one first (re-run prepare)"
            ) from None
        except OSError as exc:
            raise DataError(f"cannot read tokenizer file {path}: {exc}") from None
        return _from_blob(blob, str(path))

    def fingerprint(self) -> str:
        return hashlib.sha256(self._blob).hexdigest()

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes rebuild the tokenizer from its saved form (HF objects stay local).
        return (_from_blob, (self._blob, "<pickled tokenizer>"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def _canonical_json(payload: dict[str, Any]) -> bytes:
    # Key order is kept as built/loaded (HF vocab stays in id order for readers); json.loads
    # preserves it, so load -> save reproduces the same bytes.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _from_blob(blob: bytes, source: str) -> Tokenizer:
    try:
        payload = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"tokenizer file {source} is corrupt ({exc}); delete it and re-run prepare"
        ) from None
    meta = payload.get("lmforge") if isinstance(payload, dict) else None
    if not isinstance(meta, dict):
        raise DataError(
            f"tokenizer file {source} has no 'lmforge' section, so it was not written by lmforge; "
            "delete it and re-run prepare"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"tokenizer file {source} has format_version {meta.get('format_version')!r}, this lmforge "
            f"reads {FORMAT_VERSION}; re-run prepare to rebuild it"
        )
    try:
        if meta.get("kind") == "char":
            return CharTokenizer(payload)
        if meta.get("kind") == "bpe":
            return BpeTokenizer(payload)
        if meta.get("kind") == "hf":
            return HfTokenizer(payload)
    except Exception as exc:  # missing keys, bad types, and HF's own parse errors (plain Exception)
        raise DataError(
            f"tokenizer file {source} is corrupt ({type(exc).__name__}: {exc}); "
            "delete it and re-run prepare"
        ) from None
    raise DataError(f"tokenizer file {source} has unknown kind {meta.get('kind')!r}; re-run prepare")


def _meta(kind: str, cfg: TokenizerConfig | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": kind, "eot_token": EOT_TOKEN}
    meta.update(extra)
    if cfg is not None:
        meta["trained_with"] = asdict(cfg)
    return meta


def _surrogate_error(text: str) -> DataError | None:
    for i, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return DataError(
                f"text contains a lone surrogate U+{ord(ch):04X} at character {i}, which is not valid "
                "Unicode; read the input as UTF-8 with errors='replace' or fix its encoding"
            )
    return None


def _id_list(ids: Any) -> list[int]:
    # Accept numpy arrays and torch tensors (model outputs) as well as plain lists.
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _check_str(text: object, index: int) -> str:
    if not isinstance(text, str):
        raise DataError(f"text #{index} is a {type(text).__name__}, expected str")
    return text


# ---------------------------------------------------------------------------------------------
# char


class CharTokenizer(Tokenizer):
    """ids: [EOT] + sorted training characters + 256 byte-fallback ids for unseen characters."""

    kind = "char"

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        chars = payload["chars"]
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError("'chars' must be a list of single characters")
        self.eot_id = 0
        self._char_to_id = {c: i + 1 for i, c in enumerate(chars)}
        if len(self._char_to_id) != len(chars):
            raise ValueError("'chars' has duplicates")
        self._byte_base = 1 + len(chars)
        first_special = self._byte_base + 256
        self._special_ids = {t: first_special + i for i, t in enumerate(self.special_tokens)}
        self.vocab_size = first_special + len(self.special_tokens)
        self._id_bytes = ([b""] + [c.encode("utf-8") for c in chars] + [bytes([b]) for b in range(256)]
                          + [b""] * len(self.special_tokens))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_one(_check_str(t, i)) for i, t in enumerate(texts)]

    def _encode_one(self, text: str) -> list[int]:
        table = self._char_to_id
        try:
            return [table[c] for c in text]  # fast path: every character was seen in training
        except KeyError:
            pass
        ids: list[int] = []
        for c in text:
            i = table.get(c)
            if i is not None:
                ids.append(i)
                continue
            try:
                ids.extend(self._byte_base + b for b in c.encode("utf-8"))
            except UnicodeEncodeError:
                raise _surrogate_error(text) from None
        return ids

    def decode(self, ids: list[int]) -> str:
        table = self._id_bytes
        try:
            raw = b"".join([table[i] for i in _id_list(ids)])
        except (IndexError, TypeError):
            raise ValueError(f"ids must be integers in [0, {self.vocab_size})") from None
        # Arbitrary id sequences (model samples) may hold broken UTF-8; encoded text never does.
        return raw.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._id_bytes[token_id]

    def hf_json(self) -> dict[str, Any]:
        # A BPE model without merges and with byte fallback: each known character is its own token,
        # any other character becomes its UTF-8 bytes as <0xNN> tokens, exactly lmforge's ids.
        chars = json.loads(self._blob)["chars"]
        vocab = {EOT_TOKEN: 0, **{c: i + 1 for i, c in enumerate(chars)}}
        vocab.update({f"<0x{b:02X}>": self._byte_base + b for b in range(256)})
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [_added_token(EOT_TOKEN, 0)],
            "normalizer": None,
            "pre_tokenizer": None,
            "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": True,
                      "ignore_merges": False, "vocab": vocab, "merges": []},
        }


def _added_token(content: str, token_id: int) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _cut_pattern() -> str:
    """split_pieces' cut of long pieces as one Oniguruma regex over a piece: the rest when it fits,
    else the longest stretch of at most MAX_PIECE_CHARS - 1 characters that a space follows,
    else MAX_PIECE_CHARS characters."""
    n = MAX_PIECE_CHARS
    return f"[\\s\\S]{{1,{n}}}\\z|[\\s\\S]{{1,{n - 1}}}(?={_SPACE_CLASS})|[\\s\\S]{{{n}}}"


def _train_char(texts: Iterable[str], cfg: TokenizerConfig) -> CharTokenizer:
    seen: set[str] = set()
    for i, text in enumerate(texts):
        seen.update(_check_str(text, i))
    surrogates = [c for c in seen if 0xD800 <= ord(c) <= 0xDFFF]
    if surrogates:
        raise DataError(
            f"training text contains lone surrogate U+{ord(surrogates[0]):04X}, which is not valid "
            "Unicode; read the input as UTF-8 with errors='replace' or fix its encoding"
        )
    payload = {"lmforge": _meta("char", cfg), "chars": sorted(seen)}
    return CharTokenizer(payload)


# ---------------------------------------------------------------------------------------------
# bpe


def _byte_symbols() -> dict[str, int]:
    """Map each byte-level symbol back to its byte (the GPT-2 byte-to-printable-char scheme).

    Printable Latin-1 bytes stand for themselves; the rest are shifted to 256 + n in byte order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbol_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if chr(b) not in symbol_to_byte:
            symbol_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return symbol_to_byte


def split_pieces(text: str) -> list[str]:
    """Cut text into line pieces (newlines kept) that concatenate back to `text` exactly."""
    pieces: list[str] = []
    for piece in _PIECE_RE.findall(text):
        if len(piece) <= MAX_PIECE_CHARS:
            pieces.append(piece)
        else:
            pieces.extend(_cut_long(piece))
    return pieces


def _cut_long(piece: str) -> Iterator[str]:
    start = 0
    while len(piece) - start > MAX_PIECE_CHARS:
        end = start + MAX_PIECE_CHARS
        # Cut just before the last whitespace so the next piece starts with " word" as usual.
        cut = max((m.start() for m in _SPACE_RE.finditer(piece, start + 1, end)), default=end)
        yield piece[start:cut]
        start = cut
    yield piece[start:]


_jieba_ready = False


def _jieba() -> Any:
    global _jieba_ready
    import jieba  # imported lazily: loading its dictionary takes about a second

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict..." on stderr
        jieba.initialize()
        _jieba_ready = True
    return jieba


def jieba_words(piece: str) -> list[str]:
    """Split CJK runs into jieba words; other text stays whole (ByteLevel splits it later)."""
    jieba = _jieba()
    words: list[str] = []
    pos = 0
    for m in _CJK_RUN_RE.finditer(piece):
        if m.start() > pos:
            words.append(piece[pos : m.start()])
        run = m.group()
        # HMM off: new-word discovery is slow pure Python and BPE learns frequent pairs anyway.
        cut = list(jieba.cut(run, HMM=False))
        words.extend(cut if "".join(cut) == run else list(run))  # never lose or add characters
        pos = m.end()
    if pos < len(piece):
        words.append(piece[pos:])
    return words


def safe_chunks(text: str, pretokenizer: str) -> list[str]:
    """Cut text where the pre-tokenizer's word rule never spans (see _SAFE_CUT); they concatenate back."""
    cuts = [m.start() for m in _SAFE_CUT[pretokenizer].finditer(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if b > a]


def _encode_pieces(encode_hf: Any, texts: list[str], split: Any, pretokenized: bool = False) -> list[list[int]]:
    """Encode each text as the concatenation of its pieces' ids, all pieces in one HF batch."""
    counts: list[int] = []
    flat: list[Any] = []
    for i, text in enumerate(texts):
        pieces = split(_check_str(text, i))
        counts.append(len(pieces))
        flat.extend(pieces)
    try:
        encodings = encode_hf(flat, add_special_tokens=False, is_pretokenized=pretokenized)
    except TypeError:
        for text in texts:
            if (err := _surrogate_error(text)) is not None:
                raise err from None
        raise
    out: list[list[int]] = []
    pos = 0
    for n in counts:
        ids: list[int] = []
        for enc in encodings[pos : pos + n]:
            ids.extend(enc.ids)
        out.append(ids)
        pos += n
    return out


class BpeTokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, payload: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        super().__init__(payload)
        meta = payload["lmforge"]
        self.cjk_split = meta["cjk_split"]
        if self.cjk_split not in CJK_SPLITS:
            raise ValueError(f"unknown cjk_split {self.cjk_split!r}")
        # Files written before the option existed used lmforge's own rule.
        self.pretokenizer = meta.get("pretokenizer", "lmforge")
        if self.pretokenizer not in PRETOKENIZERS:
            raise ValueError(f"unknown pretokenizer {self.pretokenizer!r}")
        self._hf = HFTokenizer.from_str(json.dumps(payload["hf"]))
        # Text that happens to contain "<|endoftext|>" must stay text, not become the separator.
        self._hf.encode_special_tokens = True
        eot = self._hf.token_to_id(EOT_TOKEN)
        if eot is None:
            raise ValueError(f"vocabulary lacks {EOT_TOKEN}")
        self.eot_id = eot
        self._special_ids = {t: self._hf.token_to_id(t) for t in self.special_tokens}
        if None in self._special_ids.values():
            raise ValueError("special_tokens lists a token the vocabulary lacks")
        self._not_text = {eot, *self._special_ids.values()}
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self._symbol_to_byte = _byte_symbols()
        # encode_batch_fast (tokenizers >= 0.20) skips offset tracking we never use.
        self._encode_hf = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)

    def _pieces(self, text: str) -> list[Any]:
        if self.pretokenizer != "lmforge":
            return safe_chunks(text, self.pretokenizer)
        pieces = split_pieces(text)
        return [jieba_words(p) for p in pieces] if self.cjk_split == "jieba" else pieces

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return _encode_pieces(self._encode_hf, texts, self._pieces, pretokenized=self.cjk_split == "jieba"
                              and self.pretokenizer == "lmforge")

    def decode(self, ids: list[int]) -> str:
        skip = self._not_text
        return self._hf.decode([i for i in _id_list(ids) if i not in skip], skip_special_tokens=False)

    def _add_to_payload(self, payload: dict[str, Any], tokens: list[str]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        if tokens:
            hf = HFTokenizer.from_str(json.dumps(payload["hf"]))
            hf.add_special_tokens(tokens)
            payload["hf"] = json.loads(hf.to_str())

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._not_text:
            return b""
        token = self._hf.id_to_token(token_id)
        if token is None:
            raise ValueError(f"id {token_id} is outside [0, {self.vocab_size})")
        return bytes(self._symbol_to_byte[c] for c in token)

    def hf_json(self) -> dict[str, Any]:
        payload = json.loads(self._blob)["hf"]
        if self.pretokenizer != "lmforge":
            return payload  # the word rule already lives in the HF pipeline
        if self.cjk_split == "jieba":
            raise DataError(
                "tokenizer.cjk_split 'jieba' segments text with jieba's dictionary, which a tokenizer.json "
                "cannot hold; train with tokenizer.cjk_split char (or tokenizer.pretokenizer qwen2)"
            )
        # lmforge cuts text into line pieces (long ones cut again) before the HF pipeline runs;
        # the same cuts as two Split steps in front make the file encode exactly as lmforge does.
        steps = [_split(_PIECE_PATTERN), _split(_cut_pattern()), payload["pre_tokenizer"]]
        payload["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": steps}
        return payload


def _bpe_pipeline(cjk_split: str, pretokenizer: str = "lmforge") -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pretokenizer in PRETOKENIZER_REGEX:
        words = pre_tokenizers.Split(Regex(PRETOKENIZER_REGEX[pretokenizer]), behavior="isolated")
        return pre_tokenizers.Sequence([words, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pretokenizer == "gpt2" or cjk_split != "char":
        return byte_level  # "jieba" pre-splits in Python; "none" is plain GPT-2 behaviour
    # Each CJK character becomes its own pre-token, so a clause of Chinese between two
    # punctuation marks is no longer one huge unique "word" for the trainer to count.
    isolate = pre_tokenizers.Split(Regex(CJK_CLASS), behavior="isolated")
    return pre_tokenizers.Sequence([isolate, byte_level])


def _train_batches(texts: Iterable[str], cfg: TokenizerConfig) -> Iterator[list[str]]:
    batch: list[str] = []
    for i, text in enumerate(texts):
        text = _check_str(text, i)
        if cfg.pretokenizer != "lmforge":
            batch.extend(safe_chunks(text, cfg.pretokenizer))
        else:
            for piece in split_pieces(text):
                if cfg.cjk_split == "jieba":
                    # Training on each word as its own sequence is what is_pretokenized encoding does.
                    batch.extend(jieba_words(piece))
                else:
                    batch.append(piece)
        if len(batch) >= _TRAIN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _train_bpe(texts: Iterable[str], cfg: TokenizerConfig) -> BpeTokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    # llama.cpp's "llama-bpe" takes a word that is itself a token whole, before any merge (HF's
    # ignore_merges); the model must do the same to encode as llama.cpp will.
    hf = HFTokenizer(models.BPE(ignore_merges=cfg.pretokenizer == "llama3"))
    hf.pre_tokenizer = _bpe_pipeline(cfg.cjk_split, cfg.pretokenizer)
    hf.decoder = decoders.ByteLevel()
    hf.encode_special_tokens = True
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT_TOKEN],
        # All 256 byte symbols up front: any text, seen or not, stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    try:
        hf.train_from_iterator(_train_batches(texts, cfg), trainer=trainer)
    except TypeError:
        raise DataError(
            "training text contains a lone surrogate or non-text value; "
            "read the input as UTF-8 with errors='replace' or fix its encoding"
        ) from None
    extra: dict[str, Any] = {"cjk_split": cfg.cjk_split}
    if cfg.pretokenizer != "lmforge":
        extra["pretokenizer"] = cfg.pretokenizer  # absent means lmforge's rule (older files)
    meta = _meta("bpe", cfg, **extra)
    if cfg.cjk_split == "jieba":
        # Segmentation lives in jieba's dictionary, outside this file; record which one was used.
        meta["jieba_version"] = str(getattr(_jieba(), "__version__", "unknown"))
    return BpeTokenizer({"lmforge": meta, "hf": json.loads(hf.to_str())})


# ---------------------------------------------------------------------------------------------
# hf: a tokenizer taken over with an imported model


def _hf_token_text(token: dict | str | None) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class HfTokenizer(Tokenizer):
    """Any Hugging Face tokenizer.json, kept verbatim (with its tokenizer_config.json) so an imported
    model encodes as it was trained and exports back unchanged. Text is text: special-token strings
    inside it are not turned into special tokens, and nothing (no BOS) is added."""

    kind = "hf"

    def __init__(self, payload: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        super().__init__(payload)
        self._hf = HFTokenizer.from_str(json.dumps(payload["hf"]))
        self._hf.encode_special_tokens = True
        self._config = payload.get("hf_config") or {}
        self.chat_template_file: str | None = payload.get("chat_template_file")
        self.eot_token = eot_text = payload["lmforge"]["eot_token"]
        eot = self._hf.token_to_id(eot_text)
        if eot is None:
            raise ValueError(f"vocabulary lacks the end-of-text token {eot_text!r}")
        self.eot_id = eot
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        self._encode_hf = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        self._token_bytes = _token_bytes_table(payload["hf"], self._hf, self.vocab_size)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return _encode_pieces(self._encode_hf, texts, lambda t: [t])

    def decode(self, ids: list[int]) -> str:
        eot = self.eot_id
        return self._hf.decode([i for i in _id_list(ids) if i != eot], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id]

    def hf_json(self) -> dict[str, Any]:
        return json.loads(self._blob)["hf"]

    def hf_config(self) -> dict[str, Any] | None:
        return dict(self._config)


def _token_bytes_table(spec: dict[str, Any], hf: Any, vocab_size: int) -> list[bytes]:
    """The bytes each id stands for, for bits per byte: byte-level symbols mapped back to bytes,
    SentencePiece-style pieces with "▁" for a space and <0xNN> byte tokens; special tokens b""."""
    specials = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
    symbol_to_byte = _byte_symbols()
    table: list[bytes] = []
    for i in range(vocab_size):
        token = hf.id_to_token(i)
        if token is None or i in specials:
            table.append(b"")
        elif byte_level and all(c in symbol_to_byte for c in token):
            table.append(bytes(symbol_to_byte[c] for c in token))
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            table.append(bytes([int(token[3:5], 16)]))
        else:
            table.append(token.replace("\u2581", " ").encode("utf-8"))
    return table


def hf_tokenizer(tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any], source: str,
                 chat_template_file: str | None = None, eos_token: str | None = None) -> HfTokenizer:
    """Take over a Hugging Face tokenizer (tokenizer.json and tokenizer_config.json, as parsed, and the
    chat_template.jinja newer folders keep apart). The end-of-text token is `eos_token`, else the
    config's, else <|endoftext|> or </s> when the vocabulary has one."""
    eot = eos_token or _hf_token_text(tokenizer_config.get("eos_token"))
    if eot is None:
        vocab = tokenizer_json.get("model", {}).get("vocab", {})
        added = {t.get("content") for t in tokenizer_json.get("added_tokens", [])}
        eot = next((t for t in (EOT_TOKEN, "</s>", "<|end_of_text|>") if t in added or t in vocab), None)
    if eot is None:
        raise DataError(f"{source}: tokenizer_config.json names no eos_token, and the vocabulary has no "
                        f"{EOT_TOKEN} or </s>; add \"eos_token\" to tokenizer_config.json")
    payload = {"lmforge": {"format_version": FORMAT_VERSION, "kind": "hf", "eot_token": eot},
               "hf": tokenizer_json, "hf_config": tokenizer_config}
    if chat_template_file is not None:
        payload["chat_template_file"] = chat_template_file
    try:
        return HfTokenizer(payload)
    except Exception as exc:  # HF's parse errors are plain Exceptions
        raise DataError(f"{source}: the tokenizer cannot be loaded ({type(exc).__name__}: {exc})") from None


def train_tokenizer(texts: Iterable[str] | list[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train a tokenizer on `texts` (streamed once; an iterator is fine)."""
    cfg.validate()
    if cfg.kind == "char":
        return _train_char(texts, cfg)
    return _train_bpe(texts, cfg)
