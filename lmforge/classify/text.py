"""Text to ids for classifiers: normalization, word/char/BPE units, vocabularies, n-gram features.

Everything a trained classifier needs to turn new text into ids is a `TextEncoder`, saved as one
JSON file in the run folder. N-gram features (for the fastText-style model and the linear models)
are exact: each n-gram of unit ids is packed into one 63-bit key, and an `NgramIndex` maps the
keys seen in enough training texts to dense feature ids. No hashing, so no collisions.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.errors import ConfigError, DataError

PAD_ID, UNK_ID = 0, 1
SPECIALS = ("<pad>", "<unk>")

# Han ideographs (with extension A and compatibility forms), kana and hangul: scripts written
# without spaces between words.
_CJK_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_LETTER_RE = re.compile(r"[^\W\d_]")
_HTML_TAG_RE = re.compile(r"<[^<>]{0,200}>")
_SPACE_RE = re.compile(r"\s+")
# Words (keeping inner hyphens: "well-made"), clitics ("'s", "n't") and every other non-space
# character on its own ("!", "?"). Contractions are split the Penn Treebank way first ("doesn't" ->
# "does n't", "it's" -> "it 's"), so raw text and pre-tokenized corpora such as SST-2 share
# their negation and clitic tokens.
_CONTRACTION_RE = re.compile(r"(?<=[^\W_])(n['’]t|['’](?:s|re|ve|ll|d|m))\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|['’][^\W_]+|[^\w\s]")


def detect_language(texts: Sequence[str], sample: int = 2000) -> str:
    """'zh' when most letters of a sample are CJK characters, else 'en' (space-separated words)."""
    cjk = letters = 0
    step = max(1, len(texts) // sample)
    for text in texts[::step]:
        head = text[:2000]
        cjk += len(_CJK_RE.findall(head))
        letters += len(_LETTER_RE.findall(head))
    return "zh" if letters and cjk / letters > 0.3 else "en"


def normalize(text: str, lowercase: bool, strip_html: bool) -> str:
    if strip_html and "<" in text:
        text = _HTML_TAG_RE.sub(" ", text)
    if lowercase:
        text = text.lower()
    return text


_jieba_module = None


def _jieba():
    global _jieba_module
    if _jieba_module is None:
        import jieba  # imported late: loading its dictionary takes about a second

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _jieba_module = jieba
    return _jieba_module


def split_words(text: str, language: str) -> list[str]:
    """Words of an already normalized text: jieba for Chinese, a regex otherwise."""
    if language == "zh":
        # HMM new-word discovery is slow pure Python and adds little for classification.
        words = _jieba().lcut(text, HMM=False)
        return [w for w in (w.strip() for w in words) if w]
    if "'" in text or "’" in text:
        text = _CONTRACTION_RE.sub(r" \1", text)
    return _WORD_RE.findall(text)


def split_chars(text: str) -> list[str]:
    return [c for c in _SPACE_RE.sub("", text)]


class Vocab:
    """Units to ids: padding 0, unknown 1, then units by falling frequency."""

    def __init__(self, units: list[str]):
        self.units = list(units)
        self.index = {u: i for i, u in enumerate(self.units)}

    def __len__(self) -> int:
        return len(self.units)

    @classmethod
    def build(cls, docs: Iterable[list[str]], min_freq: int, max_size: int) -> Vocab:
        counts: Counter[str] = Counter()
        for units in docs:
            counts.update(units)
        kept = [u for u, c in counts.most_common(max(0, max_size - len(SPECIALS))) if c >= min_freq]
        return cls([*SPECIALS, *kept])

    def encode(self, units: list[str]) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(u, UNK_ID) for u in units), dtype=np.int32, count=len(units))


@dataclass
class Encoded:
    """Id sequences of a list of texts, and how many were cut to max_len."""

    ids: list[np.ndarray]
    truncated: int


def truncate(ids: np.ndarray, max_len: int, how: str) -> np.ndarray:
    if len(ids) <= max_len:
        return ids
    if how == "head":
        return ids[:max_len]
    if how == "tail":
        return ids[-max_len:]
    head = max_len // 3
    return np.concatenate([ids[:head], ids[len(ids) - (max_len - head):]])


class TextEncoder:
    """Normalization + units + vocabulary (or a BPE tokenizer): text to id sequences.

    kind: 'word' or 'char' (vocabulary built from the training texts) or 'bpe' (an lmforge
    tokenizer, also used for fine-tuning a GPT, whose vocabulary it defines).
    """

    def __init__(self, kind: str, language: str, lowercase: bool, strip_html: bool,
                 vocab: Vocab | None = None, bpe=None, bpe_source: str | None = None):
        self.kind = kind
        self.language = language
        self.lowercase = lowercase
        self.strip_html = strip_html
        self.vocab = vocab
        self.bpe = bpe
        self.bpe_source = bpe_source

    @property
    def vocab_size(self) -> int:
        return self.bpe.vocab_size if self.bpe is not None else len(self.vocab)

    def units(self, text: str) -> list[str]:
        text = normalize(text, self.lowercase, self.strip_html)
        if self.kind == "char":
            return split_chars(text)
        return split_words(text, self.language)

    @classmethod
    def fit(cls, texts: Sequence[str], kind: str, language: str, lowercase: bool, strip_html: bool,
            min_freq: int, max_vocab: int, bpe_path: str | None = None) -> TextEncoder:
        if kind == "bpe":
            tok, source = load_bpe(bpe_path)
            # A BPE tokenizer sees the raw text: it was trained on text as written.
            return cls("bpe", language, False, strip_html, bpe=tok, bpe_source=source)
        enc = cls(kind, language, lowercase, strip_html)
        enc.vocab = Vocab.build((enc.units(t) for t in texts), min_freq, max_vocab)
        return enc

    def encode(self, texts: Sequence[str], max_len: int, how: str = "head") -> Encoded:
        if self.bpe is not None:
            texts = [normalize(t, False, self.strip_html) for t in texts]
            raw = [np.asarray(ids, dtype=np.int32) for ids in self.bpe.encode_batch(list(texts))]
        else:
            raw = [self.vocab.encode(self.units(t)) for t in texts]
        cut = sum(len(r) > max_len for r in raw)
        return Encoded([truncate(r, max_len, how) for r in raw], cut)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "language": self.language, "lowercase": self.lowercase,
             "strip_html": self.strip_html}
        if self.bpe is not None:
            d["bpe_source"] = self.bpe_source
        else:
            d["units"] = self.vocab.units
        return d

    def save(self, path: Path) -> None:
        from lmforge.atomic import atomic_write_json

        atomic_write_json(path, self.to_json())
        if self.bpe is not None:
            self.bpe.save(Path(path).with_name("tokenizer.json"))

    @classmethod
    def load(cls, path: Path) -> TextEncoder:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d["kind"] == "bpe":
            from lmforge.data.tokenizer import Tokenizer

            tok = Tokenizer.load(Path(path).with_name("tokenizer.json"))
            return cls("bpe", d["language"], d["lowercase"], d["strip_html"], bpe=tok, bpe_source=d.get("bpe_source"))
        return cls(d["kind"], d["language"], d["lowercase"], d["strip_html"], vocab=Vocab(d["units"]))


def load_bpe(path: str | None):
    """An lmforge tokenizer from a tokenizer.json or a run folder holding data/tokenizer.json."""
    from lmforge.data.tokenizer import Tokenizer

    if not path:
        raise ConfigError("config field 'text.bpe_path': tokenizer 'bpe' needs a tokenizer.json or an lmforge run folder")
    p = Path(path)
    if p.is_dir():
        for cand in (p / "data" / "tokenizer.json", p / "tokenizer.json"):
            if cand.is_file():
                p = cand
                break
        else:
            raise ConfigError(f"config field 'text.bpe_path': {path} holds no tokenizer.json (looked in data/ too)")
    return Tokenizer.load(p), str(p)


# --- n-gram features -------------------------------------------------------------------------

_BITS = 21  # unit ids below 2**21 (2M units); three of them fit one int64 key
MAX_UNITS = 2**_BITS


def ngram_pairs(docs: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(document index, n-gram key) for every 1..n-gram of every document, vectorized.

    Unit ids must be >= 1 (so a bigram's key never equals a unigram's) and < 2**21.
    """
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    if lengths.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    doc = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    doc_parts, key_parts = [doc], [flat]
    for k in range(2, n + 1):
        if len(flat) < k:
            break
        key = flat[: len(flat) - k + 1].copy()
        for j in range(1, k):
            key |= flat[j : len(flat) - k + 1 + j] << (_BITS * j)
        same = doc[: len(flat) - k + 1] == doc[k - 1 :]  # the n-gram does not cross documents
        doc_parts.append(doc[: len(flat) - k + 1][same])
        key_parts.append(key[same])
    return np.concatenate(doc_parts), np.concatenate(key_parts)


class NgramIndex:
    """N-gram keys kept as features (seen in >= min_df training texts), sorted: key -> feature id."""

    def __init__(self, keys: np.ndarray, n: int):
        self.keys = np.asarray(keys, dtype=np.int64)
        self.n = n

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def fit(cls, docs: Sequence[np.ndarray], n: int, min_df: int) -> NgramIndex:
        doc, key = ngram_pairs(docs, n)
        # Document frequency: count each (document, key) pair once.
        order = np.lexsort((key, doc))
        doc, key = doc[order], key[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = (doc[1:] != doc[:-1]) | (key[1:] != key[:-1])
        keys, df = np.unique(key[first], return_counts=True)
        return cls(keys[df >= min_df], n)

    def lookup(self, docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(document index, feature id) for every known n-gram occurrence."""
        doc, key = ngram_pairs(docs, self.n)
        if len(self.keys) == 0 or len(key) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos = np.searchsorted(self.keys, key)
        pos = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos] == key
        return doc[hit], pos[hit]

    def sequences(self, docs: Sequence[np.ndarray], offset: int = 0) -> list[np.ndarray]:
        """Each document's feature ids (+offset), in document order: input of the n-gram bag model."""
        doc, fid = self.lookup(docs)
        order = np.argsort(doc, kind="stable")
        doc, fid = doc[order], fid[order] + offset
        bounds = np.searchsorted(doc, np.arange(len(docs) + 1))
        return [fid[bounds[i]: bounds[i + 1]].astype(np.int32) for i in range(len(docs))]

    def counts(self, docs: Sequence[np.ndarray]):
        """Sparse (documents x features) occurrence counts, CSR."""
        import scipy.sparse as sp

        doc, fid = self.lookup(docs)
        data = np.ones(len(doc), dtype=np.float64)
        m = sp.coo_matrix((data, (doc, fid)), shape=(len(docs), len(self.keys))).tocsr()
        m.sum_duplicates()
        return m


class UnitIds:
    """Every unit of the training texts gets an id (>= 2; 1 = unseen): the alphabet of n-gram keys."""

    def __init__(self, units: list[str]):
        self.units = units
        self.index = {u: i + 2 for i, u in enumerate(units)}

    @classmethod
    def build(cls, docs: Iterable[list[str]]) -> UnitIds:
        counts: Counter[str] = Counter()
        for d in docs:
            counts.update(d)
        units = [u for u, _ in counts.most_common(MAX_UNITS - 2)]
        return cls(units)

    def encode(self, units: list[str]) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(u, UNK_ID) for u in units), dtype=np.int64, count=len(units))


# --- word vectors ------------------------------------------------------------------------------


def vectors_matrix(words: Sequence[str], vectors: np.ndarray, vocab: Vocab) -> tuple[np.ndarray, int]:
    """Embedding rows for the vocabulary from (words, vectors); words without a vector keep a small random one."""
    rng = np.random.default_rng(0)
    scale = float(np.std(vectors)) if vectors.size else 0.1
    matrix = rng.normal(0, scale, size=(len(vocab), vectors.shape[1])).astype(np.float32)
    matrix[PAD_ID] = 0
    found = 0
    for w, row in zip(words, vectors):
        idx = vocab.index.get(w)
        if idx is not None and idx >= len(SPECIALS):
            matrix[idx] = row
            found += 1
    return matrix, found


def load_vectors(path: str | Path, vocab: Vocab) -> tuple[np.ndarray, int]:
    """Rows for the vocabulary's words from a GloVe or word2vec text file, and how many were found.

    Only the vocabulary's words are kept while reading, so a large file needs little memory.
    """
    words, rows = read_vectors(path, lambda word, _line: word in vocab.index)
    return vectors_matrix(words, rows, vocab)


def read_vectors(path: str | Path, keep: Callable[[str, int], bool],
                 field_name: str = "text.vectors") -> tuple[list[str], np.ndarray]:
    """(words, their vectors) of a GloVe or word2vec text file, for the words `keep(word, line number)` accepts."""
    import gzip

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config field '{field_name}': {p} not found")
    opener = gzip.open if p.name.endswith(".gz") else open
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = 0
    with opener(p, "rt", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if line_no == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                continue  # word2vec text header: "count dim"
            if len(parts) < 3:
                continue
            dim = dim or len(parts) - 1
            if len(parts) - 1 != dim:
                raise DataError(f"{p}:{line_no}: {len(parts) - 1} numbers where earlier lines had {dim}; "
                                "is this a GloVe/word2vec text file?")
            if not keep(parts[0], line_no):
                continue
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise DataError(f"{p}:{line_no}: not a word followed by numbers; is this a GloVe/word2vec "
                                "text file?") from None
            words.append(parts[0])
    if not dim:
        raise DataError(f"{p}: no vectors found; expected lines 'word v1 v2 ...' (GloVe or word2vec text format)")
    return words, np.stack(rows) if rows else np.zeros((0, dim), np.float32)
