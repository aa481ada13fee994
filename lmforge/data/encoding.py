"""Bytes of a text file to text: byte-order marks, UTF-8, and detected legacy encodings.

Never replaces characters. UTF-8 (with or without a byte-order mark) and UTF-16/32 (with one, or
BOM-less UTF-16 recognised by its NUL bytes) are taken as they are. Anything else is detected with
charset-normalizer on the lines that hold non-ASCII bytes, then checked with two rules of our own
that settle its frequent ties: Latin-script text in Windows-1252 keeps its accented letters inside
words, and Chinese in GB18030 keeps its ideographs out of ASCII words ("M黱chen" is a German word
misread). When the evidence does not single out one reading the file is refused, naming the best
guess and how sure it is; `encoding` (the `--data.encoding` option) then says what the file is.
The detected codec must decode the whole file strictly, or the error says where it stops fitting.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lmforge.errors import DataError

_UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks, longest first: a UTF-32 LE BOM begins with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Control bytes that never occur in text. Tab, newlines, VT, FF, backspace and ESC are left out:
# they do turn up in real text files (page breaks, overstrike, terminal colours).
_BINARY_BYTES = bytes([*range(0x00, 0x08), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_BINARY_CHARS = re.compile("[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f]")
_MAX_BINARY_FRACTION = 0.01
# BOM-less UTF-16: the NUL high bytes of ASCII characters must be common on one side and rare on
# the other. CJK-heavy text has fewer NULs, hence the low share.
_MIN_UTF16_NUL_SHARE = 0.05

# Detection looks at lines holding non-ASCII bytes (ASCII lines read the same in every candidate)
# within this span from the first non-UTF-8 byte, and hands at most _SAMPLE_BYTES of them over:
# a few milliseconds whatever the file's size.
_SAMPLE_SPAN = 1 << 20
_SAMPLE_BYTES = 64 << 10
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
# A guess is taken only when at most this share of its text looks garbled (charset-normalizer's
# "chaos"); candidates within _TIE of the best on both its scores are equally good readings.
_MAX_CHAOS = 0.1
_TIE = 0.02
# Candidate encodings: the legacy code pages text files are really written in (Windows and ISO
# single-byte pages for Latin, Cyrillic, Greek, Hebrew, Arabic, Baltic and Thai script, and the
# Chinese, Japanese and Korean multi-byte ones). Leaving out DOS and Mac pages removes most ties.
_CANDIDATES = ["cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258", "cp874",
               "koi8_r", "koi8_u", "iso8859_2", "iso8859_5", "iso8859_7", "gb18030", "big5", "cp950", "shift_jis",
               "cp932", "euc_jp", "euc_kr", "cp949"]
# Among codecs that read the sample identically, the name reported and used for the whole file, and
# among equally good Latin readings the one taken: the most common first (cp1252 holds every
# printable Latin-1 character).
_PREFERRED = ("cp1252", "gb18030", "cp932", "cp950", "big5", "cp949", "euc_jp", "cp1251", "koi8_r", "cp1250",
              "iso8859_2", "cp1254", "cp1257", "cp1253", "cp1255", "cp1256", "cp1258", "cp874")
# Non-ASCII letters of the languages written in Latin-script code pages. A reading in which one
# language's alphabet holds the accented letters is the right one: French read as cp1250 has
# 'trčs' and 'ŕ', Turkish read as cp1252 has 'yeþil', Hungarian read as cp1252 has 'tûrõ'.
_ALPHABETS = {
    "German": "äöüß", "French": "àâæçéèêëîïôœùûüÿ", "Spanish": "áéíñóúü", "Portuguese": "áâãàçéêíóôõú",
    "Italian": "àèéìíîòóùú", "Catalan": "àçéèíïòóúü", "Dutch": "áéëïóöüèà", "Swedish": "åäöé",
    "Danish/Norwegian": "æøåé", "Icelandic": "áðéíóúýþæö", "Finnish": "äöåšž", "Estonian": "äöõüšž",
    "Irish": "áéíóú", "Albanian": "çë", "Polish": "ąćęłńóśźż", "Czech": "áčďéěíňóřšťúůýž",
    "Slovak": "áäčďéíĺľňóôŕšťúýž", "Hungarian": "áéíóöőúüű", "Romanian": "ăâîșțşţ", "Croatian": "čćđšž",
    "Slovene": "čšž", "Turkish": "çğıİöşüâîû", "Latvian": "āčēģīķļņšūž", "Lithuanian": "ąčęėįšųūž",
    "Maltese": "ċġħżàèìòù",
}
_ALPHABET_SETS = {lang: set(chars) | {c.upper() for c in chars if len(c.upper()) == 1}
                  for lang, chars in _ALPHABETS.items()}
# A Latin reading is taken when one language explains this share of its accented letters.
_MIN_COVER = 0.8
# Share of the words holding non-ASCII characters that must pass a script rule (Latin, Chinese).
_SCRIPT_SHARE = 0.95
_WORD_PARTS = re.compile(r"^([\W_]*)(.*?)([\W_]*)$", re.S)
# Punctuation that may stand around a Latin word, and signs that may stand inside one (5°C, m², l’été).
_LATIN_PUNCT = set("«»“”„‘’‚‹›–—…¿¡°€£§·•\xa0")
_LATIN_INNER = set("-'’.°²³µ·½¼¾×")
# Code pages of Latin-script text, in the order ties between equally good readings are settled.
_LATIN_CODECS = ("cp1252", "cp1250", "iso8859_2", "cp1254", "cp1257")
_C1_CONTROLS = re.compile("[\x80-\x9f]")
_HOW_TO_SET = ("Set --data.encoding NAME (for example cp1252, latin-1, gbk, shift_jis, cp1251), or convert the "
               "file to UTF-8 (iconv -f NAME -t UTF-8)")


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str  # the codec that decoded the bytes, e.g. "utf-8", "cp1252", "utf-16-le"
    how: str  # "utf-8", "byte-order mark", "NUL pattern", "detected" or "--data.encoding"


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _looks_binary(text: str) -> bool:
    return len(_BINARY_CHARS.findall(text)) > _MAX_BINARY_FRACTION * max(len(text), 1)


def _guess_utf16(data: bytes) -> str | None:
    """The UTF-16 codec for BOM-less data whose NUL bytes fit UTF-16, else None."""
    units = len(data) // 2
    if units == 0 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    # ASCII in UTF-16 LE puts the NUL high byte at odd offsets; BE at even ones.
    codec, major, minor = ("utf-16-le", odd, even) if odd > even else ("utf-16-be", even, odd)
    if major < _MIN_UTF16_NUL_SHARE * units or minor * 4 > major:
        return None
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    return None if _looks_binary(text) else codec


def _binary_error(source: str, count: int, total: int, has_nul: bool) -> DataError:
    # Mostly-CJK UTF-16 without a BOM has too few NUL bytes to be recognised; say so.
    hint = " If it is UTF-16 text without a byte-order mark, re-save it as UTF-8." if has_nul else ""
    return DataError(
        f"{source}: looks like a binary file, not text ({count} of {total} bytes are control bytes "
        f"such as NUL). Remove it from the data path, or convert it to UTF-8 text.{hint}"
    )


def _strict(data: bytes, codec: str, source: str, why: str) -> str:
    """Decode all of `data` with `codec` (chosen because of `why`), or say where it stops fitting."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{source}: {why}, but byte 0x{bad} on line {_line_of(data, exc.start)} is not valid {codec}: the file "
            "mixes encodings or is damaged there. Fix that line, or convert the file to UTF-8, or set "
            "--data.encoding NAME."
        ) from None


def _explicit(data: bytes, source: str, encoding: str) -> Decoded:
    from lmforge.config import text_codec

    codec = text_codec(encoding)
    if codec is None:
        raise DataError(f"{source}: {encoding!r} (--data.encoding) is not a known text encoding; use auto, or a codec "
                        "name such as utf-8, latin-1, cp1252, gbk")
    if codec == "utf-8" and data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{source}: byte 0x{bad} on line {_line_of(data, exc.start)} is not valid {encoding} (set by "
            "--data.encoding). Give the file's real encoding, or --data.encoding auto to detect it."
        ) from None
    if _looks_binary(text):
        count = len(_BINARY_CHARS.findall(text))
        raise DataError(
            f"{source}: read as {encoding} (set by --data.encoding), {count} of {len(text)} characters are "
            "control characters such as NUL: a binary file or the wrong encoding. Remove it from the data path, "
            "or give its real encoding."
        )
    return Decoded(text, encoding, "--data.encoding")


def _from_bom(data: bytes, source: str) -> Decoded | None:
    if data.startswith(_UTF8_BOM):
        return Decoded(_strict(data[len(_UTF8_BOM) :], "utf-8", source, "starts with a UTF-8 byte-order mark"),
                       "utf-8", "byte-order mark")
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom) :].decode(codec), codec, "byte-order mark")
            except UnicodeDecodeError as exc:
                # A UTF-32 LE BOM may just be a UTF-16 LE BOM followed by a NUL; keep looking.
                if codec.startswith("utf-32"):
                    continue
                raise DataError(
                    f"{source}: starts with a {codec.upper()} byte-order mark but is not valid "
                    f"{codec.upper()} (byte {exc.start}). Re-save the file as UTF-8."
                ) from None
    return None


def decode(data: bytes, source: str, encoding: str = "auto") -> Decoded:
    """Decode text bytes; `encoding` is 'auto' (detect) or a codec name that overrides detection.

    Raises DataError for binary files, for bytes the codec cannot decode, and when the encoding
    cannot be told with confidence.
    """
    if encoding != "auto":
        return _explicit(data, source, encoding)
    found = _from_bom(data, source)
    if found is not None:
        return found
    if 0 in data:
        codec = _guess_utf16(data)
        if codec is not None:
            return Decoded(data.decode(codec), codec, "NUL pattern")
    # Bytes below 0x20 mean the same in every candidate encoding, so this check is encoding-independent.
    binary = len(data) - len(data.translate(None, _BINARY_BYTES))
    if binary > _MAX_BINARY_FRACTION * len(data):
        raise _binary_error(source, binary, len(data), 0 in data)
    try:
        return Decoded(data.decode("utf-8"), "utf-8", "utf-8")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    line = _line_of(data, first_bad)
    try:
        codec = detect(_sample(data, first_bad), source, line)
    except DataError:
        utf8_line = _utf8_line(data, None)  # a mix confuses detection: say so rather than guess
        if utf8_line is not None:
            raise _mixed(source, utf8_line, line, None) from None
        raise
    utf8_line = _utf8_line(data, codec)
    if utf8_line is not None:
        raise _mixed(source, utf8_line, line, codec)
    return Decoded(_strict(data, codec, source, f"reads as {codec} from line {line} on (detected)"), codec, "detected")


def _mixed(source: str, utf8_line: int, line: int, codec: str | None) -> DataError:
    reads = f" (it reads as {codec})" if codec else ""
    return DataError(
        f"{source}: mixes encodings: line {utf8_line} is UTF-8, but line {line} is not{reads}. Convert the other "
        "lines to UTF-8 too (e.g. with iconv), or set --data.encoding NAME if the UTF-8-looking line is really in "
        "that encoding."
    )


# Non-ASCII characters a line must hold before its being valid UTF-8 counts as evidence: a short
# run of GBK or Big5 characters is valid UTF-8 by chance now and then, accented Latin letters never.
_MIN_UTF8_CHARS = {"single-byte": 2, "multi-byte": 8}
_MULTI_BYTE = ("gb18030", "cp950", "big5", "cp932", "shift_jis", "euc_jp", "cp949", "euc_kr")


def _non_ascii(text: str) -> int:
    return len(text) - len(text.encode("ascii", "ignore"))


def _utf8_line(data: bytes, codec: str | None) -> int | None:
    """The first line of a legacy-encoded file that is valid UTF-8 with several non-ASCII
    characters: a file put together from UTF-8 and legacy parts, which the legacy codec would
    turn into mojibake ('Ã©', '鏈哄櫒') without an error. `codec` None: not known."""
    need = _MIN_UTF8_CHARS["multi-byte" if codec in _MULTI_BYTE else "single-byte"]
    text = data.decode("utf-8", errors="replace")  # U+FFFD where a byte is not UTF-8
    if _non_ascii(text) - text.count("\ufffd") < need:  # the usual case, at C speed
        return None
    for number, line in enumerate(text.split("\n"), 1):
        if "\ufffd" not in line and not line.isascii() and _non_ascii(line) >= need:
            return number
    return None


def decode_bytes(data: bytes, source: str, encoding: str = "auto") -> str:
    return decode(data, source, encoding).text


# --- detection -----------------------------------------------------------------------------------


def _safe_cut(data: bytes, begin: int, end: int) -> int:
    """An end in (begin, end] that splits no multi-byte character: just after a space or line break
    (never part of a multi-byte sequence in GBK, GB18030, Big5, Shift-JIS or EUC)."""
    cut = max(data.rfind(b"\n", begin, end), data.rfind(b" ", begin, end))
    return cut + 1 if cut >= begin else end


def _sample(data: bytes, first_bad: int) -> bytes:
    """Lines with non-ASCII bytes from the line of the first non-UTF-8 byte on, at most _SAMPLE_BYTES."""
    begin = data.rfind(b"\n", 0, first_bad) + 1
    if first_bad - begin > _SAMPLE_BYTES // 2:  # a very long line: start near the byte instead
        begin = _safe_cut(data, first_bad - _SAMPLE_BYTES // 4, first_bad)
    end = min(len(data), begin + _SAMPLE_SPAN)
    if end < len(data):
        end = _safe_cut(data, begin, end)
    sample = b"\n".join(line for line in data[begin:end].split(b"\n") if _HIGH_BYTE.search(line))
    if len(sample) > _SAMPLE_BYTES:
        sample = sample[: _safe_cut(sample, 0, _SAMPLE_BYTES)]
    return sample


def _names(match) -> list[str]:
    return [match.encoding, *match.could_be_from_charset]


def _preferred(match) -> str:
    names = _names(match)
    return next((n for n in _PREFERRED if n in names), match.encoding)


def _latin_word(word: str) -> bool:
    lead, core, tail = _WORD_PARTS.match(word).groups()  # type: ignore[union-attr]  # always matches
    for edge in (lead, tail):  # at most one non-ASCII punctuation mark on each side: „Äpfel“, «crème»
        extra = [c for c in edge if not c.isascii()]
        if len(extra) > 1 or any(c not in _LATIN_PUNCT for c in extra):
            return False
    if core.isascii():
        return True
    if not all(c.isalpha() or c in _LATIN_INNER for c in core if not c.isascii()):
        return False
    lone_letter = len(core) == 1 and (lead + tail).isascii()  # French 'à', Spanish 'ó'
    if not lone_letter and not any(c.isascii() and c.isalpha() for c in core):
        return False
    return max(map(len, re.findall(r"[^\x00-\x7f]+", core))) <= 4


def reads_as_latin(text: str) -> bool:
    """Latin-script prose: each word's non-ASCII characters are letters inside a word that also has
    ASCII letters (or a one-letter word such as French 'à'), with a punctuation mark at most around
    it. Other scripts read as a Windows code page ('Ìîñêâà', 'ÖÐÎÄ²âÊÔ') fail, and so do symbols
    wrapped around a letter ('€ÿ€') or Chinese quotes read as Latin ('¡°hello¡±')."""
    words = [w for w in text.split() if not w.isascii()]
    if not words:  # only non-ASCII spaces (no-break space): nothing speaks against it
        return True
    return sum(map(_latin_word, words)) >= _SCRIPT_SHARE * len(words)


def latin_cover(text: str) -> float:
    """Share of the accented letters that the alphabet of one Latin-script language holds (1 when
    there are none)."""
    letters = [c for c in text if not c.isascii() and c.isalpha()]
    if not letters:
        return 1.0
    counts: dict[str, int] = {}
    for c in letters:
        counts[c] = counts.get(c, 0) + 1
    best = max(sum(n for c, n in counts.items() if c in alphabet) for alphabet in _ALPHABET_SETS.values())
    return best / len(letters)


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return (0x2E80 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF or 0x20000 <= o <= 0x3FFFF
            or unicodedata.category(c)[0] in "PS")


def _common_hanzi(c: str) -> bool:
    """One of the 3755 most common simplified characters (GB2312 level 1, lead bytes 0xB0-0xD7)."""
    try:
        return 0xB0 <= c.encode("gb2312")[0] <= 0xD7
    except UnicodeEncodeError:
        return False


def reads_as_chinese(text: str) -> bool:
    """Chinese text: its non-ASCII characters are CJK characters, punctuation or symbols, its ideographs
    mostly common ones (a short Cyrillic or Shift-JIS word read as GBK gives rare ones), and a run
    of them is not wedged inside an ASCII word (German 'München' read as GBK is 'M黱chen')."""
    non_ascii = [c for c in text if not c.isascii()]
    if not non_ascii or sum(map(_is_cjk, non_ascii)) < _SCRIPT_SHARE * len(non_ascii):
        return False
    ideographs = [c for c in non_ascii if 0x4E00 <= ord(c) <= 0x9FFF]
    if sum(map(_common_hanzi, ideographs)) < 0.9 * len(ideographs):
        return False
    return not _wedged(text)


def _common_hangul(c: str) -> bool:
    """One of the 2350 Hangul syllables of KS X 1001 (EUC-KR), which hold nearly all Korean text."""
    try:
        return 0xAC00 <= ord(c) <= 0xD7A3 and len(c.encode("euc_kr")) == 2
    except UnicodeEncodeError:
        return False


def reads_as_korean(text: str) -> bool:
    """Korean text: its non-ASCII letters are common Hangul syllables (a short Shift-JIS word read as
    cp949 gives rare ones), not wedged inside ASCII words."""
    letters = [c for c in text if not c.isascii() and c.isalpha()]
    if not letters or sum(map(_common_hangul, letters)) < 0.9 * len(letters):
        return False
    return not _wedged(text)


def _wedged(text: str) -> bool:
    """Runs of non-ASCII characters sit inside ASCII words more often than real CJK text allows."""
    runs = list(re.finditer(r"[^\x00-\x7f]+", text))
    wedged = sum(1 for m in runs if m.start() > 0 and m.end() < len(text)
                 and text[m.start() - 1].isalpha() and text[m.end()].isalpha())
    return wedged > (1 - _SCRIPT_SHARE) * len(runs)


# Rules that settle a tie in favour of a multi-byte reading, in the order they are tried.
_CJK_RULES = (("gb18030", reads_as_chinese), ("cp949", reads_as_korean))


@dataclass(frozen=True)
class Verdict:
    codec: str | None  # None: not confident
    guess: str  # the best guess, for the message ("" when nothing fits)
    confidence: float  # 0..1; a guess is taken from 0.5 on
    alternatives: tuple[str, ...] = ()


def _confidence(chaos: float, readings: int) -> float:
    """1 for a clean unique reading, 0.5 at the most garbled text taken, shared among equal readings."""
    return max(0.0, 1.0 - 0.5 * chaos / _MAX_CHAOS) / readings


def _latin_script(text: str) -> bool:
    """Most non-ASCII letters are Latin ones (U+00C0-U+024F)."""
    letters = [c for c in text if not c.isascii() and c.isalpha()]
    return bool(letters) and sum(0xC0 <= ord(c) <= 0x24F for c in letters) > 0.5 * len(letters)


def _latin_verdict(sample: bytes) -> Verdict | None:
    """The Latin-script reading whose accented letters one language explains best (ties: the most
    common code page), or None when no reading looks like Latin-script prose.

    Settled by these rules rather than by charset-normalizer, which rates French read as cp1250
    ('trčs', 'ŕ la plage') as good as cp1252 and often ranks it first."""
    scored = []
    for rank, codec in enumerate(_LATIN_CODECS):
        # A stray byte the code page lacks (or a C1 control it maps to) leaves the reading in the
        # running: decoding the whole file strictly then names its line.
        text = sample.decode(codec, errors="replace")
        stray = text.count("\ufffd") + len(_C1_CONTROLS.findall(text))
        if stray <= max(2, len(text) // 1000) and reads_as_latin(text):
            scored.append((latin_cover(text), rank, codec))
    if not scored:
        return None
    top = max(cover for cover, _, _ in scored)
    if top < _MIN_COVER:
        return None
    cover, _, codec = min((s for s in scored if s[0] >= top - _TIE), key=lambda s: s[1])
    return Verdict(codec, codec, cover)


def judge(sample: bytes) -> Verdict:
    """The codec of a sample of non-UTF-8 text, or a verdict of no confidence with the best guess."""
    latin = _latin_verdict(sample)
    if latin is not None:
        return latin
    from charset_normalizer import from_bytes  # imported late: only non-UTF-8 files need it

    steps = max(5, min(64, len(sample) // 512))
    matches = list(from_bytes(sample, steps=steps, chunk_size=512, cp_isolation=_CANDIDATES))
    if not matches:
        return Verdict(None, "", 0.0)
    # A Latin-script reading that failed the Latin rules is garbled ('gę¶l±'), however calm its score.
    plausible = [m for m in matches if m.chaos <= _MAX_CHAOS and not _latin_script(str(m))]
    if not plausible:
        return Verdict(None, _preferred(matches[0]), min(0.49, _confidence(matches[0].chaos, 1)))
    best = plausible[0]
    tied = [m for m in plausible if m.chaos <= best.chaos + _TIE and m.coherence >= best.coherence - _TIE]
    readings = {str(m) for m in tied}
    if len(readings) == 1:
        return Verdict(_preferred(best), _preferred(best), _confidence(best.chaos, 1))
    for codec, rule in _CJK_RULES:
        match = next((m for m in tied if codec in _names(m)), None)
        if match is not None and rule(str(match)):
            return Verdict(_preferred(match), _preferred(match), _confidence(match.chaos, 1))
    return Verdict(None, _preferred(best), _confidence(best.chaos, len(readings)),
                   tuple(_preferred(m) for m in tied[1:6]))


def detect(sample: bytes, source: str, line: int) -> str:
    """The codec for a file whose first non-UTF-8 byte is on `line`; DataError when not confident."""
    verdict = judge(sample)
    if verdict.codec is not None:
        return verdict.codec
    if not verdict.guess:
        raise DataError(
            f"{source}: not UTF-8 (first invalid byte on line {line}) and no known text encoding fits. "
            f"{_HOW_TO_SET}; or remove it if it is not text."
        )
    also = f"; as likely: {', '.join(verdict.alternatives)}" if verdict.alternatives else ""
    raise DataError(
        f"{source}: cannot tell its text encoding (not UTF-8 from line {line}; best guess {verdict.guess} at "
        f"{verdict.confidence:.0%} confidence{also}). {_HOW_TO_SET}."
    )


# --- files too big to hold: the codec, checked block by block ---------------------------------------


def stream_codec(blocks: Iterable[bytes], encoding: str = "auto") -> tuple[str, str, int] | None:
    """(codec, how, bytes to skip at the start) with which `decode` would read the whole of the bytes
    `blocks` yields, found without holding them; None when only `decode` on the whole can tell (BOM-less
    UTF-16, a legacy encoding to detect) or when it would refuse them (its error message needs the whole).
    Covers what large corpora are: UTF-8 with or without a byte-order mark, and any --data.encoding."""
    from lmforge.config import text_codec

    if encoding != "auto":
        codec = text_codec(encoding)
        if codec is None:
            return None
        how = "--data.encoding"
    else:
        codec, how = "utf-8", "utf-8"
    decoder = codecs.getincrementaldecoder(codec)("strict")
    skip, binary, total, chars, first = 0, 0, 0, 0, True
    try:
        for block in _at_least(blocks, 4):  # a byte-order mark is seen whole
            if first:
                first = False
                if codec == "utf-8" and block.startswith(_UTF8_BOM):
                    skip, block = len(_UTF8_BOM), block[len(_UTF8_BOM) :]
                    how = "byte-order mark" if encoding == "auto" else how
                elif encoding == "auto" and any(block.startswith(bom) for bom, _ in _BOMS):
                    return None
            if encoding == "auto":
                if 0 in block:
                    return None  # perhaps BOM-less UTF-16: decode() guesses on the whole
                binary += len(block) - len(block.translate(None, _BINARY_BYTES))
                total += len(block)
                decoder.decode(block)
            else:
                text = decoder.decode(block)
                binary += len(_BINARY_CHARS.findall(text))
                chars += len(text)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None
    if encoding == "auto":
        if binary > _MAX_BINARY_FRACTION * total:
            return None
    elif binary > _MAX_BINARY_FRACTION * max(chars, 1):
        return None
    return codec, how, skip


def _at_least(blocks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`blocks`, the first of them joined with the next ones until it holds `size` bytes (or all there is)."""
    head = b""
    blocks = iter(blocks)
    for block in blocks:
        head += block
        if len(head) >= size:
            break
    if head:
        yield head
    yield from blocks
