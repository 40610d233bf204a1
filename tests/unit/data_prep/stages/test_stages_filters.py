"""Each quality rule with hand-made documents just inside and just outside its threshold."""

import pytest

from data_prep.stages.langid import identify
from tests.helpers import docs_of, kept, reason, run_stage

FILLER = ["house", "river", "garden", "stone", "window", "market", "bridge", "forest"]


def prose(n_words, stop=("the", "with")):
    """n_words words: the given stop words, then 5-6 letter filler words."""
    words = list(stop) + [FILLER[i % len(FILLER)] for i in range(n_words - len(stop))]
    return " ".join(words)


# ---- Gopher quality -------------------------------------------------------------------------
GQ = {"type": "gopher_quality"}


def test_gopher_word_count_bounds():
    assert reason(GQ, prose(50)) is None
    assert reason(GQ, prose(49)) == "gopher_quality:word_count"
    assert reason({**GQ, "max_words": 60}, prose(60)) is None
    assert reason({**GQ, "max_words": 60}, prose(61)) == "gopher_quality:word_count"


def test_gopher_default_max_words_on_a_long_document():
    assert reason(GQ, prose(100_000)) is None
    assert reason(GQ, prose(100_001)) == "gopher_quality:word_count"


def test_gopher_mean_word_length_bounds():
    three = " ".join(["the", "and"] + ["cat"] * 48)  # mean exactly 3
    assert reason(GQ, three) is None
    assert reason(GQ, three.replace("cat", "ox", 1)) == "gopher_quality:mean_word_length"  # 2.98
    ten = " ".join(["that", "with"] + ["abcdefghijk"] * 12 + ["abcdefghij"] * 36)  # 500 chars / 50 words
    assert reason(GQ, ten) is None
    assert reason(GQ, ten + "x") == "gopher_quality:mean_word_length"  # 10.02


def test_gopher_hash_and_ellipsis_ratios():
    words = prose(50).split()
    five_tags = " ".join(f"#{w}" if i < 5 else w for i, w in enumerate(words[2:])) + " the with"
    assert reason(GQ, " ".join(words[:2]) + " " + five_tags) is None  # 5 '#' / 50 words
    six_tags = five_tags.replace("stone", "#stone", 1)
    assert reason(GQ, " ".join(words[:2]) + " " + six_tags) == "gopher_quality:hash_ratio"
    five = " ".join(f"{w}..." if i < 5 else w for i, w in enumerate(words))
    assert reason(GQ, five) is None
    six = " ".join(f"{w}..." if i < 6 else w for i, w in enumerate(words))
    assert reason(GQ, six) == "gopher_quality:ellipsis_ratio"


def test_gopher_bullet_and_ellipsis_lines():
    lines = [prose(8, stop=("the", "with")) for _ in range(10)]
    nine = "\n".join(("\u2022 " + l) if i < 9 else l for i, l in enumerate(lines))
    assert reason(GQ, nine) is None  # 90% bullets is allowed
    ten = "\n".join("- " + l for l in lines)
    assert reason(GQ, ten) == "gopher_quality:bullet_lines"
    three = "\n".join((l + "...") if i < 3 else l for i, l in enumerate(lines))
    assert reason(GQ, three) is None
    four = "\n".join((l + "\u2026") if i < 4 else l for i, l in enumerate(lines))
    assert reason(GQ, four) == "gopher_quality:ellipsis_lines"


def test_gopher_alpha_words_and_stop_words():
    words = prose(50).split()
    ten_numbers = " ".join(str(1000 + i) if 2 <= i < 12 else w for i, w in enumerate(words))
    assert reason(GQ, ten_numbers) is None  # 40 of 50 words have a letter: 80%
    eleven = " ".join(str(1000 + i) if 2 <= i < 13 else w for i, w in enumerate(words))
    assert reason(GQ, eleven) == "gopher_quality:alpha_words"
    assert reason(GQ, prose(50, stop=("the", "The"))) is None  # case-insensitive, repeats count
    assert reason(GQ, prose(50, stop=("the",))) == "gopher_quality:stop_words"


# ---- Gopher repetition ----------------------------------------------------------------------
OFF = {"max_dup_lines": 1.0, "max_dup_paragraphs": 1.0, "max_dup_line_chars": 1.0,
       "max_dup_paragraph_chars": 1.0, "max_top_ngram_chars": {}, "max_dup_ngram_chars": {}}


def rep(**only):
    return {"type": "gopher_repetition", **OFF, **only}


def unique_words(n, start=0):
    return [f"w{i:03d}" for i in range(start, start + n)]  # 4 characters each, all distinct


def test_repetition_duplicate_lines():
    lines = [" ".join(unique_words(3, 10 * i)) for i in range(7)]
    three = "\n".join(lines + lines[:3])  # 3 of 10 lines repeat
    assert reason(rep(max_dup_lines=0.3), three) is None
    four = "\n".join(lines[:6] + lines[:4])  # 4 of 10
    assert reason(rep(max_dup_lines=0.3), four) == "gopher_repetition:dup_lines"


def test_repetition_duplicate_line_characters():
    # 9 distinct lines of 9 characters + one repeat: 9 repeated of 99 characters (0.0909)
    lines = [f"line{i:02d} ab" for i in range(9)]
    text = "\n".join(lines + lines[:1])
    assert reason(rep(max_dup_line_chars=0.0910), text) is None
    assert reason(rep(max_dup_line_chars=0.0909), text) == "gopher_repetition:dup_line_chars"


def test_repetition_duplicate_paragraphs():
    paras = [" ".join(unique_words(3, 10 * i)) for i in range(7)]
    assert reason(rep(max_dup_paragraphs=0.3), "\n\n".join(paras + paras[:3])) is None
    assert reason(rep(max_dup_paragraphs=0.3), "\n\n".join(paras[:6] + paras[:4])) == \
        "gopher_repetition:dup_paragraphs"
    # 2 paragraphs of 14 chars, one repeated: 14 of 30 characters
    text = "w001 w002 w003\n\nw001 w002 w003"
    assert reason(rep(max_dup_paragraph_chars=0.5), text) is None
    assert reason(rep(max_dup_paragraph_chars=0.46), text) == "gopher_repetition:dup_paragraph_chars"


def test_repetition_top_bigram():
    # "aaaa bbbb" x4 = 32 word characters of 32 + 64 (16 unique fillers) = 96: 0.333
    text = " ".join(["aaaa", "bbbb"] * 4 + unique_words(16))
    assert reason(rep(max_top_ngram_chars={2: 1 / 3}), text) is None
    assert reason(rep(max_top_ngram_chars={2: 0.33}), text) == "gopher_repetition:top_2gram_chars"
    # the published default 0.20: 4 x "aa bb" (16 chars) of 80 passes, of 79 fails
    pair = ["aa", "bb"] * 4
    assert reason(rep(max_top_ngram_chars={2: 0.2}), " ".join(pair + unique_words(16))) is None
    shorter = " ".join(pair + unique_words(15) + ["xyz"])
    assert reason(rep(max_top_ngram_chars={2: 0.2}), shorter) == "gopher_repetition:top_2gram_chars"


def test_repetition_duplicate_5grams_default_threshold():
    five = ["aaaa", "bbbb", "cccc", "dddd", "eeee"]  # repeated once: 20 of 4*W characters
    text_35 = " ".join(five + unique_words(25) + five)  # 20/140 = 0.143 <= 0.15
    assert reason(rep(max_dup_ngram_chars={5: 0.15}), text_35) is None
    text_33 = " ".join(five + unique_words(23) + five)  # 20/132 = 0.152
    assert reason(rep(max_dup_ngram_chars={5: 0.15}), text_33) == "gopher_repetition:dup_5gram_chars"


def test_repetition_overlapping_ngrams_count_once():
    # "a a a a a a" (6 words): 5-grams at 0 and 1 are equal; the repeat covers words 1..5 once
    text = " ".join(["aaaa"] * 6 + unique_words(19))  # 20 of 100 characters
    assert reason(rep(max_dup_ngram_chars={5: 0.2}), text) is None
    assert reason(rep(max_dup_ngram_chars={5: 0.19}), text) == "gopher_repetition:dup_5gram_chars"


def test_repetition_defaults_keep_ordinary_prose():
    text = ("The committee met on Tuesday to discuss the budget for the coming year. "
            "Several members argued that the library deserved more money, while others wanted "
            "to repair the roads first. After a long debate they agreed to split the funds.")
    assert reason({"type": "gopher_repetition"}, text) is None


# ---- C4 ----------------------------------------------------------------------------------------
C4 = {"type": "c4"}
GOOD = ["The first sentence is here.", "Another line ends well!", "Is this a question?",
        "He said \"yes.\"", "The fifth line is fine."]


def test_c4_keeps_lines_with_terminal_punctuation_and_enough_words():
    text = "\n".join(GOOD[:2] + ["Menu Home About", "Two words.", "Read more..."] + GOOD[2:])
    out, stats = run_stage(C4, docs_of(text))
    assert out[0].text == "\n".join(GOOD)
    assert stats.counters == {"lines:no_terminal_punct": 2, "lines:too_few_words": 1}


def test_c4_min_sentences():
    assert kept(C4, "\n".join(GOOD)) == ["\n".join(GOOD)]  # 5 sentences
    assert reason(C4, "\n".join(GOOD[:4])) == "c4:too_few_sentences"
    assert kept(C4, "One. Two words here. Three is here. Four is here. Five is here.")  # sentences, not lines


def test_c4_line_rules_javascript_policy_long_words_citations():
    text = "\n".join(GOOD + ["Please enable JavaScript to view this page.", "This site uses cookies to work.",
                             "A " + "x" * 1001 + " word.", "Rome was founded in 753 BC.[1][citation needed]"])
    (doc,), stats = run_stage(C4, docs_of(text))
    assert doc.text == "\n".join(GOOD + ["Rome was founded in 753 BC."])
    assert stats.counters == {"lines:javascript": 1, "lines:policy": 1, "lines:long_word": 1}
    assert len(doc.text.splitlines()[-1]) < 1000


def test_c4_page_rules():
    assert reason(C4, "\n".join(GOOD + ["Lorem ipsum dolor sit amet."])) == "c4:lorem_ipsum"
    assert reason(C4, "\n".join(GOOD + ["function f() { return 1; }"])) == "c4:curly_bracket"


# ---- FineWeb -----------------------------------------------------------------------------------
FW = {"type": "fineweb_quality"}


def fw_lines(n, punct, short=0):
    """n distinct lines; the first `punct` end with a period; the last `short` are short."""
    out = []
    for i in range(n):
        line = f"line number {i:03d} of a fairly long list of words" + ("." if i < punct else "")
        out.append(f"item {i:03d}" if i >= n - short else line)
    return "\n".join(out)


def test_fineweb_punctuated_lines_ratio():
    assert reason(FW, fw_lines(100, punct=13)) is None
    assert reason(FW, fw_lines(100, punct=12)) == "fineweb_quality:punct_lines"  # 0.12 is removed


def test_fineweb_short_lines_ratio():
    assert reason(FW, fw_lines(100, punct=100, short=66)) is None
    assert reason(FW, fw_lines(100, punct=100, short=67)) == "fineweb_quality:short_lines"


def test_fineweb_duplicated_line_characters():
    lines = [f"distinct sentence number {i:04d} with some words." for i in range(99)]  # 45 chars each
    dup = lines[0]
    just_below = "\n".join(lines + [dup])  # 45 of 100*45 = 1.0% -> removed (>= 0.01)
    assert reason(FW, just_below) == "fineweb_quality:dup_line_chars"
    assert reason({**FW, "max_dup_line_chars": 0.0101}, just_below) is None


def test_fineweb_newlines_per_word():
    lines = [f"extraordinarily longwindedness number{i}." for i in range(10)]  # 3 words, > 30 chars
    assert reason(FW, "\n".join(lines)) is None  # 9 newlines / 30 words = 0.3
    more = "\n".join(lines + ["extraordinarily longwindedness."])  # 10 / 32 > 0.3
    assert reason(FW, more) == "fineweb_quality:newlines_per_word"


# ---- language ----------------------------------------------------------------------------------
EN = "The weather in the mountains changed quickly, and the hikers decided to return to the village."
FR = "Le temps dans les montagnes a changé rapidement, et les randonneurs ont décidé de rentrer au village."


def test_language_keeps_wanted_languages_and_records_them():
    out, stats = run_stage({"type": "language"}, docs_of(EN, FR))
    assert [d.text for d in out] == [EN]
    assert out[0].meta["language"] == "en" and out[0].meta["language_score"] > 0.99
    assert stats.removed == {"language:other_language": 1}
    assert kept({"type": "language", "languages": ["en", "fr"]}, EN, FR) == [EN, FR]


def test_language_min_score_threshold():
    _, score = identify(EN)
    assert reason({"type": "language", "min_score": score - 1e-6}, EN) is None
    assert reason({"type": "language", "min_score": min(score + 1e-6, 1.0)}, EN) == "language:low_score"


# ---- blocklist ---------------------------------------------------------------------------------
@pytest.fixture
def word_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# comment\nbadword\nTwo Words\n\n")
    return str(path)


def test_blocklist_whole_words_and_phrases(word_list):
    spec = {"type": "blocklist", "path": word_list}
    assert reason(spec, "this has a badword in it") == "blocklist:blocked_word"
    assert reason(spec, "BADWORD, shouted") == "blocklist:blocked_word"
    assert reason(spec, "badwords and abadword are other words") is None
    assert reason(spec, "there are two   words here") == "blocklist:blocked_word"
    assert reason(spec, "two of the words") is None


def test_blocklist_min_matches(word_list):
    spec = {"type": "blocklist", "path": word_list, "min_matches": 2}
    assert reason(spec, "one badword only") is None
    assert reason(spec, "badword and two words") == "blocklist:blocked_word"


def test_blocklist_with_ldnoobw(shared_data):
    path = shared_data / "bias" / "ldnoobw" / "en"
    if not path.is_file():
        pytest.skip("LDNOOBW list absent")
    spec = {"type": "blocklist", "path": str(path)}
    assert reason(spec, "A quiet walk through the park on a sunny afternoon with friends.") is None
    assert reason(spec, "Where can I buy a dildo online?") == "blocklist:blocked_word"
    assert reason(spec, "The class assessment is on Monday in Scunthorpe.") is None
