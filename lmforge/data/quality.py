"""Heuristic quality filters (Gopher / FineWeb style) and the language filter.

A word is a run of letters or digits, and every CJK character is a word of its own: Chinese has no
spaces, and one-character words keep the counting filters meaningful there without a segmenter.
`reject_reason` returns the name of the first filter a document fails (None: keep), so the summary
can say how much each filter removed.
"""

from __future__ import annotations

import re
from collections import Counter

from lmforge.config import FilterConfig

CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{CJK_RANGES}]|[^\W{CJK_RANGES}]+")
_CJK = re.compile(f"[{CJK_RANGES}]")
_BULLETS = ("-", "*", "•", "‣", "●", "◦", "·", "–", "—")
_SENTENCE_END = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "」", "』", "…", "；", ";", ":", "：")
_ELLIPSES = ("...", "…")
SHORT_LINE_CHARS = 30


def words(text: str) -> list[str]:
    """Words as the filters and the shingles count them (lower-cased)."""
    return _WORD.findall(text.lower())


def mostly_cjk(text: str, word_list: list[str]) -> bool:
    return bool(word_list) and len(_CJK.findall(text)) > len(word_list) / 2


def _ngram_dup_char_fraction(word_list: list[str], n: int) -> float:
    """Share of word characters inside n-grams that occur more than once (Gopher's duplicate n-gram rule)."""
    if len(word_list) < n:
        return 0.0
    grams = [tuple(word_list[i : i + n]) for i in range(len(word_list) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(word_list)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in word_list)
    return sum(len(w) for w, c in zip(word_list, covered) if c) / max(1, total)


def _top_bigram_char_fraction(word_list: list[str]) -> float:
    if len(word_list) < 2:
        return 0.0
    counts = Counter(zip(word_list, word_list[1:]))
    (a, b), count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * (len(a) + len(b)) / max(1, sum(len(w) for w in word_list))


def _line_checks(cfg: FilterConfig, text: str) -> str | None:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return None
    n = len(lines)
    if cfg.max_bullet_line_fraction and sum(line.startswith(_BULLETS) for line in lines) / n > cfg.max_bullet_line_fraction:
        return "max_bullet_line_fraction"
    if cfg.max_ellipsis_line_fraction and (
        sum(line.endswith(_ELLIPSES) for line in lines) / n > cfg.max_ellipsis_line_fraction
    ):
        return "max_ellipsis_line_fraction"
    if cfg.min_punct_line_fraction and sum(line.endswith(_SENTENCE_END) for line in lines) / n < cfg.min_punct_line_fraction:
        return "min_punct_line_fraction"
    if cfg.max_short_line_fraction and (
        sum(len(line) < SHORT_LINE_CHARS for line in lines) / n > cfg.max_short_line_fraction
    ):
        return "max_short_line_fraction"
    if cfg.max_dup_line_fraction and (n - len(set(lines))) / n > cfg.max_dup_line_fraction:
        return "max_dup_line_fraction"
    return None


def _word_checks(cfg: FilterConfig, text: str, word_list: list[str], shingle_words: int) -> str | None:
    n = len(word_list)
    if cfg.min_words and n < cfg.min_words:
        return "min_words"
    if cfg.max_words and n > cfg.max_words:
        return "max_words"
    if n == 0:
        return None
    if (cfg.min_mean_word_chars or cfg.max_mean_word_chars) and not mostly_cjk(text, word_list):
        mean = sum(len(w) for w in word_list) / n
        if cfg.min_mean_word_chars and mean < cfg.min_mean_word_chars:
            return "min_mean_word_chars"
        if cfg.max_mean_word_chars and mean > cfg.max_mean_word_chars:
            return "max_mean_word_chars"
    if cfg.max_symbol_word_ratio:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > cfg.max_symbol_word_ratio:
            return "max_symbol_word_ratio"
    if cfg.min_alpha_word_fraction:
        alpha = sum(any(c.isalpha() for c in w) for w in word_list)
        if alpha / n < cfg.min_alpha_word_fraction:
            return "min_alpha_word_fraction"
    if cfg.max_top_bigram_char_fraction and _top_bigram_char_fraction(word_list) > cfg.max_top_bigram_char_fraction:
        return "max_top_bigram_char_fraction"
    if cfg.max_dup_ngram_char_fraction and (
        _ngram_dup_char_fraction(word_list, shingle_words) > cfg.max_dup_ngram_char_fraction
    ):
        return "max_dup_ngram_char_fraction"
    return None


def parse_languages(languages: str) -> set[str]:
    """The codes of filter.languages; a code the language model does not know is refused (it would drop
    every document)."""
    from py3langid.langid import classify

    from lmforge.errors import ConfigError

    codes = {code.strip().lower() for code in languages.split(",") if code.strip()}
    classify("")  # loads the model the first time
    from py3langid.langid import IDENTIFIER

    unknown = sorted(codes - set(IDENTIFIER.nb_classes))
    if unknown:
        raise ConfigError(f"config field 'filter.languages': {', '.join(unknown)} is not a language code the "
                          "language detector knows; use ISO 639-1 codes such as en, zh, fr, de")
    return codes


def reject_reason(text: str, cfg: FilterConfig, shingle_words: int = 5) -> str | None:
    """Name of the first filter `text` fails, or None when it passes them all."""
    word_list = words(text)
    reason = _word_checks(cfg, text, word_list, shingle_words) or _line_checks(cfg, text)
    if reason is None and cfg.languages:
        if not _in_languages(text, cfg.languages):
            return "languages"
    return reason


def _in_languages(text: str, languages: str) -> bool:
    # Scoring against every language py3langid knows, then checking membership, rejects text in other
    # languages; scoring only the wanted ones would always return one of them.
    from py3langid.langid import classify

    return classify(text[:2000])[0] in parse_languages(languages)


def any_enabled(cfg: FilterConfig) -> bool:
    return any(bool(getattr(cfg, name)) for name in cfg.__dataclass_fields__)
