"""Honest decoding: real-language text in its legacy encodings, short files, refusals, overrides."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.encoding import decode, decode_bytes, reads_as_chinese, reads_as_latin
from lmforge.data.readers import read_documents, read_texts
from lmforge.errors import DataError

SAMPLES = {
    "german": "Die Stadt München liegt an der Isar. Über die Brücke gehen täglich viele Menschen, die Straßen "
              "sind voll. Größere Übungen machen den Meister, sagte die Lehrerin. Äpfel wachsen im Garten.",
    "french": "L'été dernier, nous sommes allés à la plage. C'était très agréable, même le café crème était "
              "délicieux. Où est la forêt ? Là-bas, près du château. Les élèves étudient à l'école.",
    "spanish": "El niño comió una manzana por la mañana. ¿Qué pasó? ¡Olé! La señora García está en el jardín. "
               "Mañana iremos a la montaña con nuestros amigos, después de la reunión.",
    "portuguese": "A informação está disponível para todos. Ação, coração, não, pão. São Paulo é uma cidade "
                  "grande e a população cresce. Você já visitou o Brasil? É um país maravilhoso.",
    "italian": "Perché è così difficile? Più tardi andrò là con gli amici. La città e l'università sono vicine. "
               "Il caffè è buono, però è già freddo. Lunedì sarà una bella giornata.",
    "danish": "Hun går på arbejde hver dag. Børnene leger i haven, og de spiser æbler. Det er en dejlig dag på "
              "øen. Københavns gader er fulde af cykler.",
    "polish": "Zażółć gęślą jaźń. Łódź jest dużym miastem w Polsce. Często pada deszcz, ale świeci słońce. "
              "Wszyscy uczniowie przyszli do szkoły, żeby zdać egzamin z języka polskiego.",
    "czech": "Příliš žluťoučký kůň úpěl ďábelské ódy. Praha je hlavní město České republiky. Dnes je krásné "
             "počasí, takže půjdeme na procházku do parku se svými přáteli.",
    "hungarian": "Árvíztűrő tükörfúrógép. Budapest Magyarország fővárosa, ahol sok ember él. Ma szép idő van, "
                 "ezért elmegyünk sétálni a parkba a barátainkkal. Őszintén szólva nagyon örülök.",
    "turkish": "İstanbul Türkiye'nin en büyük şehridir. Bugün hava çok güzel, ağaçlar yeşil. Öğrenciler okula "
               "gidiyor ve öğretmenler ders anlatıyor. Çok teşekkür ederim.",
    "russian": "Москва - столица России. Это большой город с богатой историей. Сегодня хорошая погода, и мы "
               "пойдём гулять в парк с друзьями. Все студенты сдали экзамен.",
    "greek": "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Σήμερα ο καιρός είναι καλός και θα πάμε βόλτα στο πάρκο "
             "με τους φίλους μας. Όλοι οι μαθητές πέρασαν τις εξετάσεις.",
    "chinese": "机器学习是人工智能的一个分支。深度学习使用多层神经网络。今天天气很好，我们去公园散步吧。北京是中国的首都。",
    "chinese-mixed": "用Python编程很有趣。机器学习 (machine learning) 是人工智能的一个分支。我们使用GPU训练模型。",
    "chinese-traditional": "機器學習是人工智慧的一個分支。今天天氣很好，我們去公園散步吧。臺北是一個美麗的城市。",
    "japanese": "日本語のテキストです。東京は日本の首都です。今日は良い天気ですね。ひらがなとカタカナを勉強しています。",
    "korean": "한국어 텍스트입니다. 서울은 한국의 수도입니다. 오늘 날씨가 좋네요. 우리는 공원에 산책하러 갑니다.",
}
# (sample, encoding written, codecs that count as the right answer)
CASES = [
    ("german", "latin-1", {"cp1252"}), ("german", "cp1252", {"cp1252"}), ("french", "cp1252", {"cp1252"}),
    ("french", "latin-1", {"cp1252"}), ("spanish", "latin-1", {"cp1252"}), ("portuguese", "latin-1", {"cp1252"}),
    ("italian", "latin-1", {"cp1252"}), ("danish", "latin-1", {"cp1252"}), ("polish", "cp1250", {"cp1250"}),
    ("czech", "cp1250", {"cp1250"}), ("czech", "iso8859_2", {"iso8859_2"}), ("hungarian", "cp1250", {"cp1250"}),
    ("turkish", "cp1254", {"cp1254"}), ("russian", "cp1251", {"cp1251"}), ("russian", "koi8_r", {"koi8_r"}),
    ("greek", "cp1253", {"cp1253"}), ("chinese", "gbk", {"gb18030"}), ("chinese", "gb18030", {"gb18030"}),
    ("chinese-mixed", "gbk", {"gb18030"}), ("chinese-traditional", "big5", {"cp950", "big5"}),
    ("japanese", "shift_jis", {"cp932"}), ("japanese", "euc_jp", {"euc_jp"}), ("korean", "euc_kr", {"cp949"}),
]


@pytest.mark.parametrize(("name", "written", "codecs"), CASES, ids=[f"{n}-{e}" for n, e, _ in CASES])
@pytest.mark.parametrize("lines", [1, 20])
def test_real_language_text_decodes_exactly_in_its_legacy_encoding(name, written, codecs, lines):
    text = (SAMPLES[name] + "\n") * lines
    decoded = decode(text.encode(written), "f.txt")
    assert decoded.text == text
    assert decoded.encoding in codecs and decoded.how == "detected"


@pytest.mark.parametrize(("text", "written"), [
    ("München", "latin-1"), ("Grüße", "latin-1"), ("café", "latin-1"), ("Il est à Paris.", "latin-1"),
    ("¿Qué?", "latin-1"), ("hello\xa0world", "latin-1"), ("He said “hello” – and left…", "cp1252"),
    ("We met at the café and had a crème brûlée.", "cp1252"), ("中文", "gbk"), ("中文测试，这是一个句子。", "gbk"),
])
def test_short_files(text, written):
    assert decode_bytes(text.encode(written), "f.txt") == text


def test_the_issue_example_is_not_read_as_chinese(tmp_path):
    # Before: GB18030 was tried last and accepted "M黱chen".
    (tmp_path / "de.txt").write_bytes("München ist schön.\n".encode("latin-1"))
    (tmp_path / "de.csv").write_bytes("text,label\nMünchen ist schön,1\nGrüße,0\n".encode("latin-1"))
    assert read_texts(tmp_path / "de.txt") == ["München ist schön."]
    from lmforge.classify.data import read_labeled

    assert read_labeled(tmp_path / "de.csv", "text", "label").texts == ["München ist schön", "Grüße"]


@pytest.mark.parametrize(("data", "guess"), [
    (b"text \x80\xff\x80 more\n" * 3, "best guess"),  # symbols around a letter in cp1252, garbage elsewhere
    ("Привет".encode("cp1251"), "best guess"),  # six bytes: Cyrillic, or three rare Chinese characters?
    ("東京".encode("shift_jis"), "best guess"),
    (bytes(range(0x80, 0x100)) * 4, "no known text encoding fits"),
])
def test_no_confident_guess_is_refused_with_what_to_do(data, guess):
    with pytest.raises(DataError) as err:
        decode_bytes(data, "odd.txt")
    message = str(err.value)
    assert message.startswith("odd.txt: ") and guess in message
    assert "--data.encoding NAME" in message and "UTF-8" in message and "\n" not in message


def test_explicit_encoding_overrides_detection_and_is_checked():
    short = "Привет".encode("cp1251")
    assert decode_bytes(short, "f.txt", "cp1251") == "Привет"
    assert decode(short, "f.txt", "cp1251").how == "--data.encoding"
    # latin-1 decodes any bytes: the override is taken as said, even where detection would differ.
    assert decode_bytes("ŕ la".encode("cp1250"), "f.txt", "latin-1") == "à la"
    assert decode_bytes(b"\xef\xbb\xbfhi", "f.txt", "utf-8") == "hi"
    with pytest.raises(DataError, match=r"f\.txt: byte 0xc3 on line 2 is not valid ascii \(set by --data.encoding\)"):
        decode_bytes("ok\nMünchen\n".encode(), "f.txt", "ascii")
    with pytest.raises(DataError, match=r"bin\.txt: read as latin-1.*control characters"):
        decode_bytes(bytes(range(32)) * 8, "bin.txt", "latin-1")


def test_detection_uses_the_lines_after_a_long_ascii_start():
    # The first non-ASCII byte comes after 2 MB of ASCII: detection samples around it, not the file's head.
    data = b"plain ascii line of text\n" * 90_000 + "Größe und Übung in München.\n".encode("latin-1")
    decoded = decode(data, "late.txt")
    assert decoded.encoding == "cp1252" and decoded.text.endswith("Größe und Übung in München.\n")


def test_a_file_that_changes_encoding_says_where():
    data = (SAMPLES["german"] + "\n").encode("latin-1") * 50 + "€ 5\n".encode("cp1252") + b"\x81\n"
    with pytest.raises(DataError) as err:
        decode_bytes(data, "mixed.txt")
    message = str(err.value)
    assert "mixed.txt: reads as cp1252 from line 1 on (detected)" in message
    assert "byte 0x81 on line 52 is not valid cp1252" in message and "mixes encodings" in message


@pytest.mark.parametrize(("legacy", "codec"), [("german", "latin-1"), ("chinese", "gbk"), ("russian", "cp1251")])
def test_utf8_lines_in_a_legacy_file_are_refused_not_turned_into_mojibake(legacy, codec):
    # Every byte decodes in the legacy codec, so only the UTF-8 line itself gives the mix away.
    data = (SAMPLES[legacy] + "\n").encode(codec) * 30 + (SAMPLES["chinese"] + "\n").encode("utf-8")
    with pytest.raises(DataError, match=r"mixed\.txt: mixes encodings: line 31 is UTF-8, but line 1 is not"):
        decode_bytes(data, "mixed.txt")


def test_utf8_bom_with_invalid_bytes_is_an_error_not_a_guess():
    with pytest.raises(DataError, match=r"bom\.txt: starts with a UTF-8 byte-order mark, but byte 0xff on line 2"):
        decode_bytes(b"\xef\xbb\xbfabc\n\xff\n", "bom.txt")


def test_script_rules():
    assert reads_as_latin("Grüße aus München, „Äpfel“ und «crème» à 5°C.")
    assert not reads_as_latin("Ìîñêâà - ñòîëèöà Ðîññèè")  # Russian read as cp1252
    assert not reads_as_latin("ÖÐÎÄ²âÊÔ£¬ÕâÊÇÒ»¸ö¾ä×Ó")  # Chinese read as cp1252
    assert not reads_as_latin("¡°hello¡±")  # GBK quotes read as cp1252
    assert reads_as_chinese("用Python编程很有趣。")
    assert not reads_as_chinese("M黱chen")  # an ideograph wedged inside a Latin word
    assert not reads_as_chinese("橡桠弪")  # Cyrillic read as GBK: rare characters


ACCENTED = {"german": "äöüßÄÖÜ", "french": "éèêàâçîïôûùœÉÈÀÇ", "spanish": "ñáéíóúüÑÁÉ", "portuguese": "ãõçáéêóàÃÇ"}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(ACCENTED)).flatmap(lambda lang: st.lists(
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), st.sampled_from(ACCENTED[lang]),
              st.text("abcdefghijklmnopqrstuvwxyz", min_size=0, max_size=8)), min_size=1, max_size=30)))
def test_western_words_in_cp1252_round_trip(words):
    # Words of ASCII letters with accented letters of one language inside, as in German, French,
    # Spanish or Portuguese prose.
    text = " ".join(a + b + c for a, b, c in words) + "\n"
    assert decode_bytes(text.encode("cp1252"), "f.txt") == text


def test_read_documents_reports_decoding_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("plain\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("Größe\n".encode("latin-1"))
    (tmp_path / "c.txt").write_bytes("with bom\n".encode("utf-16"))  # Python writes the BOM
    stream = read_documents(tmp_path)
    assert [d.text for d in stream] == ["plain", "Größe", "with bom"]
    assert stream.report.decoded == {"cp1252 (detected)": [str(tmp_path / "b.txt")],
                                     "utf-16-le (byte-order mark)": [str(tmp_path / "c.txt")]}
    forced = read_documents(tmp_path / "b.txt", encoding="latin-1")
    assert [d.text for d in forced] == ["Größe"]
    assert forced.report.decoded == {"latin-1 (--data.encoding)": [str(tmp_path / "b.txt")]}
