"""Clean text documents, report what was removed, and split them into train and validation."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from lmforge.config import CleanConfig
from lmforge.errors import DataError


@dataclass
class CleanReport:
    documents_in: int = 0
    documents_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    removed_empty: int = 0
    removed_short: int = 0
    removed_duplicate: int = 0
    control_chars_removed: int = 0
    min_chars: int = 1  # the limit behind removed_short, so the summary can name it
    removed_near_duplicate: int = 0
    removed_by_filter: dict[str, int] = field(default_factory=dict)  # filter name -> documents it removed
    near_duplicate_examples: list[dict] = field(default_factory=list)  # {"kept", "removed", "similarity"}

    def summary_lines(self) -> list[str]:
        lines = [
            f"documents: {self.documents_in:,} in, {self.documents_out:,} kept "
            f"({_percent(self.documents_out, self.documents_in)})",
            f"characters: {self.chars_in:,} in, {self.chars_out:,} kept "
            f"({_percent(self.chars_out, self.chars_in)})",
        ]
        removals = (
            (self.removed_empty, "empty after cleaning"),
            (self.removed_short, f"shorter than min_chars={self.min_chars} characters"),
            (self.removed_duplicate, "exact duplicates of an earlier document"),
            (self.removed_near_duplicate, "near-duplicates of an earlier document (clean.near_dedup)"),
        ) + tuple((count, f"failed the quality filter filter.{name}")
                  for name, count in sorted(self.removed_by_filter.items()))
        for count, reason in removals:
            if count:
                lines.append(
                    f"removed {count:,} document(s) ({_percent(count, self.documents_in)}): {reason}"
                )
        for example in self.near_duplicate_examples[:2]:
            lines.append(f"near-duplicate pair (similarity {example['similarity']:.2f}): kept "
                         f"{example['kept']!r} / removed {example['removed']!r}")
        if self.control_chars_removed:
            lines.append(f"removed {self.control_chars_removed:,} control character(s) (strip_control)")
        if len(lines) == 2:
            lines.append("nothing removed")
        return lines

    def to_dict(self) -> dict:
        return asdict(self)


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


_CR_LINE_BREAK = re.compile(r"\r\n?")
# Category Cc except \t and \n; \r is turned into \n before this runs.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Control characters that separate words (vertical tab, form feed, information separators, NEL):
# deleting them would glue words together, so they become a space.
_CONTROL_SPACES = frozenset("\x0b\x0c\x1c\x1d\x1e\x1f\x85")
# Unicode category Zs other than U+0020 (a fixed set since Unicode 6.3); line and paragraph
# separators (Zl, Zp) are line breaks.
_SPACE_SEPARATORS = "\u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u202f\u205f\u3000"
_WHITESPACE_TABLE = str.maketrans({**dict.fromkeys(_SPACE_SEPARATORS, " "), "\u2028": "\n", "\u2029": "\n"})
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def _strip_control(text: str) -> tuple[str, int]:
    if _CONTROL.search(text) is None:
        return text, 0
    return _CONTROL.subn(lambda m: " " if m.group() in _CONTROL_SPACES else "", text)


def _normalize_whitespace(text: str) -> str:
    text = text.translate(_WHITESPACE_TABLE)
    # Per line rather than a regex: a regex for trailing blanks is quadratic on long space runs.
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    return _BLANK_LINE_RUN.sub("\n\n", text).strip()


def _clean(text: str, cfg: CleanConfig) -> tuple[str, int]:
    """Cleaned text and the number of control characters removed."""
    removed = 0
    if (cfg.strip_control or cfg.normalize_whitespace) and "\r" in text:
        # A CR is a line break (old Mac, Windows); deleting it as a control character would glue lines.
        text = _CR_LINE_BREAK.sub("\n", text)
    if cfg.strip_control:
        text, removed = _strip_control(text)
    # NFKC after control stripping: removing a control character can put a base letter next to a
    # combining mark, which NFKC would then compose only on a second pass.
    if cfg.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.normalize_whitespace:
        text = _normalize_whitespace(text)
    return text, removed


def clean_counted(text: str, cfg: CleanConfig) -> tuple[str, int]:
    """Cleaned text and the number of control characters removed."""
    return _clean(text, cfg)


def fingerprint(text: str) -> bytes:
    """16-byte digest for exact deduplication."""
    return _fingerprint(text)


def clean_text(text: str, cfg: CleanConfig) -> str:
    return _clean(text, cfg)[0]


def _fingerprint(text: str) -> bytes:
    # surrogatepass: JSON escapes can leave lone surrogates in a str, which plain UTF-8 refuses.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def clean_documents(docs: Iterable[str], cfg: CleanConfig) -> tuple[list[str], CleanReport]:
    """Clean every document and drop empty, short and duplicate ones, counting each reason."""
    report = CleanReport(min_chars=cfg.min_chars)
    seen: set[bytes] = set()  # digests only, so the corpus is not held in memory twice
    kept: list[str] = []
    for doc in docs:
        report.documents_in += 1
        report.chars_in += len(doc)
        text, removed = _clean(doc, cfg)
        report.control_chars_removed += removed
        if not text:
            report.removed_empty += 1
            continue
        if len(text) < cfg.min_chars:
            report.removed_short += 1
            continue
        if cfg.dedup:
            digest = _fingerprint(text)
            if digest in seen:
                report.removed_duplicate += 1
                continue
            seen.add(digest)
        kept.append(text)
        report.documents_out += 1
        report.chars_out += len(text)
    return kept, report


def _nearest(text: str, char: str, target: int, tolerance: float) -> int | None:
    """Index of the ``char`` nearest to target within tolerance, leaving text on both sides."""
    before = text.rfind(char, 0, target)
    after = text.find(char, target)
    candidates = [i for i in (before, after) if 0 < i < len(text) - 1 and abs(i - target) <= tolerance]
    return min(candidates, key=lambda i: abs(i - target)) if candidates else None


def _split_single(text: str, val_fraction: float) -> tuple[list[str], list[str]]:
    """Split one document by characters so a one-document corpus still gets a validation part."""
    if len(text) < 2:
        return [text], []
    target = min(max(round(len(text) * (1 - val_fraction)), 1), len(text) - 1)
    tolerance = len(text) * val_fraction / 2
    for char in ("\n", " "):
        cut = _nearest(text, char, target, tolerance)
        if cut is not None:
            return [text[:cut]], [text[cut + 1 :]]  # the separator itself belongs to neither part
    return [text[:target]], [text[target:]]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train/validation split by document; each part keeps the original document order."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction: must be at least 0 and below 1, got {val_fraction}. Use e.g. 0.05.")
    if val_fraction == 0.0 or not docs:
        return list(docs), []
    if len(docs) == 1:
        return _split_single(docs[0], val_fraction)
    n_val = min(max(round(len(docs) * val_fraction), 1), len(docs) - 1)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_indices = set(order[:n_val])
    train = [doc for i, doc in enumerate(docs) if i not in val_indices]
    val = [doc for i, doc in enumerate(docs) if i in val_indices]
    return train, val
