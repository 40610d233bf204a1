import unicodedata

import pytest

from data_prep.stages.clean import UnicodeFix
from tests.helpers import docs_of, kept, run_stage

ARTICLE = "<p>" + " ".join(["The river flooded the old town after three days of rain."] * 6) + "</p>"
PAGE = f"""<html><head><title>News</title><script>var x = 1;</script></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/sport">Sport</a></li><li><a href="/login">Log in</a></li></ul></nav>
<article><h1>Flood in the valley</h1>{ARTICLE}
<p>Residents said the water rose faster than anyone expected, and the council opened two shelters.</p></article>
<footer>Copyright 2024 Example News. All rights reserved. Privacy policy. Cookie settings.</footer>
</body></html>"""


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_html_extract_keeps_article_drops_boilerplate(extractor):
    (text,) = kept({"type": "html_extract", "extractor": extractor}, PAGE)
    assert "The river flooded the old town" in text
    assert "the council opened two shelters" in text
    for boilerplate in ("var x", "Log in", "Copyright 2024", "Cookie settings"):
        assert boilerplate not in text


def test_html_extract_counts_pages_without_text():
    out, stats = run_stage({"type": "html_extract"}, docs_of("<html><head><script>var a = 1;</script></head><body></body></html>", "   "))
    assert out == []
    assert stats.removed == {"html_extract:no_main_text": 1, "html_extract:empty_html": 1}


def test_unicode_fix_repairs_mojibake_and_normalises():
    fix = UnicodeFix()
    assert fix.clean("The Mona Lisa doesnâ€™t have eyebrows.") == "The Mona Lisa doesn\u2019t have eyebrows."
    decomposed = "Cafe\u0301 cre\u0300me"
    assert fix.clean(decomposed) == unicodedata.normalize("NFC", decomposed) == "Caf\u00e9 cr\u00e8me"
    assert fix.clean("caf\u00e9 au lait") == "caf\u00e9 au lait"  # correct text is left alone


def test_unicode_fix_whitespace_and_control_characters():
    fix = UnicodeFix()
    text = "\ufeffTitle\x00\x07\r\nline\u00a0with\t\tspaces  \r\n\n\n\n\nlast\u200b line \u2028next"
    assert fix.clean(text) == "Title\nline with spaces\n\n\nlast line\nnext"
    assert UnicodeFix(max_blank_lines=0).clean("a\n\n\n\nb") == "a\nb"


def test_unicode_fix_lone_surrogates_and_empty_documents():
    out, stats = run_stage({"type": "unicode_fix"}, docs_of("bad \udcff byte", " \x00\x01 \n\t", ""))
    assert [d.text for d in out] == ["bad \ufffd byte"]
    assert stats.removed == {"unicode_fix:empty": 2}
    assert stats.docs_in == 3 and stats.docs_out == 1


def test_emoji_modes():
    text = "I \u2764\ufe0f \U0001f355 and \U0001f44d\U0001f3fd, keycap #\ufe0f\u20e3 vs # 5 \u265e"
    assert kept({"type": "emoji"}, text) == [
        "I :red_heart: :pizza: and :thumbs_up_medium_skin_tone:, keycap :keycap_#: vs # 5 \u265e"]
    assert kept({"type": "emoji", "mode": "remove"}, text) == ["I   and , keycap  vs # 5 \u265e"]
    assert kept({"type": "emoji", "mode": "keep"}, text) == [text]
    assert kept({"type": "emoji", "other_symbols": "name", "delimiters": ["<", ">"]}, "x \u265e \U0001f355") == [
        "x <black_chess_knight> <pizza>"]


def test_emoji_configured_per_source():
    docs = docs_of("chat \U0001f600", source="chat") + docs_of("web \U0001f600", source="web")
    out, _ = run_stage({"type": "emoji", "mode": "demojize", "sources": ["web"]}, docs)
    assert [d.text for d in out] == ["chat \U0001f600", "web :grinning_face:"]


def test_emoji_only_text_is_counted_when_removed():
    out, stats = run_stage({"type": "emoji", "mode": "remove"}, docs_of("\U0001f600\U0001f600"))
    assert out == [] and stats.removed == {"emoji:empty": 1}
