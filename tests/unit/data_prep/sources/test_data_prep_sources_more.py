"""data_prep readers for .zst files, WARC web archives and Hugging Face datasets: the documents
they give, and bad input counted with its place (file:line, file:offset or shard:row)."""

import dataclasses
import gzip
import json
import os
import random
import sys
import zlib

import pytest
import zstandard

from data_prep import prepare
from data_prep.config import SourceConfig, config_from_dict
from data_prep.errors import ConfigError, SourceError
from data_prep.sources import read_file, read_source, resolve_files
from data_prep.stages.clean import HtmlExtract
from data_prep.stats import StageStats
from tests.helpers import decoded_records, read_source_docs, repaired, skipped


def zst_frames(*parts: bytes) -> bytes:
    """One zstd frame per part, concatenated (as `zstd` and multi-threaded writers make them)."""
    return b"".join(zstandard.ZstdCompressor(level=3).compress(p) for p in parts)


# --- .zst ---------------------------------------------------------------------------------------


def test_jsonl_zst_is_read_like_plain_and_gzip(tmp_path):
    lines = [json.dumps({"text": "one"}), "{not json", json.dumps({"body": "x"}), "",
             json.dumps({"text": 5}), json.dumps({"text": "bad \ud800 surrogate"})]
    raw = ("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff byte"}\n'
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a.jsonl.zst").write_bytes(zst_frames(raw[:20], raw[20:]))  # a frame ends inside a line
    results = {}
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst"):
        docs, report = read_source_docs(SourceConfig("j", "jsonl", paths=[str(tmp_path / name)]))
        results[name] = [(d.id.split(":")[1], d.text) for d in docs], report.removed, report.counters
    assert results["a.jsonl.zst"] == results["a.jsonl"] == results["a.jsonl.gz"]
    docs, report = read_source_docs(SourceConfig("j", "jsonl", paths=[str(tmp_path / "a.jsonl.zst")]))
    assert [(d.id, d.text) for d in docs] == [("j/a.jsonl.zst:1", "one"), ("j/a.jsonl.zst:6", "bad \ufffd surrogate"),
                                              ("j/a.jsonl.zst:7", "bad \ufffd byte")]
    assert skipped(report, "malformed_json") == (1, ["j/a.jsonl.zst:2"])
    assert skipped(report, "missing_text_field") == (1, ["j/a.jsonl.zst:3"])
    assert repaired(report, "invalid_utf8") == (1, ["j/a.jsonl.zst"])

    # many frames across the reader's 16 kB chunks, a binary file and an empty one
    many = [b"".join(b'{"text": "line %d"}\n' % i for i in range(k, k + 5000)) for k in range(1, 20_001, 5000)]
    (tmp_path / "big.jsonl.zst").write_bytes(zst_frames(*many))
    (tmp_path / "bin.jsonl.zst").write_bytes(zst_frames(b'{"text": "\x00\x01"}\n'))
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    docs, report = read_source_docs(SourceConfig("j", "jsonl", paths=[str(tmp_path / n) for n in ("big.jsonl.zst", "bin.jsonl.zst",
                                                                                      "empty.jsonl.zst")]))
    assert [d.text for d in docs] == [f"line {i}" for i in range(1, 20_001)]
    assert report.removed == {"read:binary_file": 1, "read:empty_file": 1}


def test_damaged_zst_and_gzip_keep_the_lines_before_and_say_where(tmp_path):
    first, second = (b"".join(b'{"text": "line %d"}\n' % i for i in range(k, k + 10_000)) for k in (1, 10_001))
    frames = zst_frames(first, second)
    one = len(zst_frames(first))
    (tmp_path / "cut.jsonl.zst").write_bytes(frames[: one + (len(frames) - one) // 2])  # ends inside frame 2
    (tmp_path / "bad.jsonl.zst").write_bytes(frames[:one] + bytes(4) + frames[one + 4:])  # frame 2 has no magic
    # a second gzip member whose first deflate block has the reserved type: zlib.error, not EOFError
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(first) + gzip.compress(b"")[:10] + b"\xff" * 20)
    (tmp_path / "next.jsonl.zst").write_bytes(zst_frames(b'{"text": "next file"}\n'))
    for name, lines in (("cut.jsonl.zst", None), ("bad.jsonl.zst", 10_000), ("bad.jsonl.gz", 10_000)):
        docs, report = read_source_docs(SourceConfig("z", "jsonl", paths=[str(tmp_path / name), str(tmp_path / "next.jsonl.zst")]))
        n = len(docs) - 1
        assert n == lines or (lines is None and 10_000 <= n < 20_000), (name, n)
        assert [d.text for d in docs] == [f"line {i}" for i in range(1, n + 1)] + ["next file"]
        assert report.removed == {"read:corrupt_file": 1}, name  # no half line counted as malformed JSON
        assert report.examples["read:corrupt_file"] == [f"z/{name}:{n + 1}"]


def test_txt_zst(tmp_path):
    (tmp_path / "a.txt.zst").write_bytes(zst_frames("first para\n\nsecond ".encode(), "para é\n".encode()))
    (tmp_path / "b.txt.zst").write_bytes(zst_frames(b"cut off")[:-3])
    docs, report = read_source_docs(SourceConfig("t", "txt", paths=[str(tmp_path / "*.zst")], doc_separator="blank_line"))
    assert [(d.id, d.text) for d in docs] == [("t/a.txt.zst:0", "first para"), ("t/a.txt.zst:1", "second para é")]
    assert skipped(report, "corrupt_file") == (1, ["t/b.txt.zst"])


# --- WARC ---------------------------------------------------------------------------------------


def http(status: str, headers: dict, body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def warc_record(rec_type: str, uri: str | None, block: bytes, content_type: str) -> bytes:
    """One WARC/1.0 record as the standard writes it: header lines, a blank line, the block, CRLF CRLF."""
    headers = [("WARC-Type", rec_type), ("WARC-Record-ID", f"<urn:uuid:{zlib.crc32(block):08x}-0000-0000-0000-000000000000>"),
               ("WARC-Date", "2024-05-01T12:00:00Z")]
    headers += [("WARC-Target-URI", uri)] if uri else []
    headers += [("Content-Type", content_type), ("Content-Length", str(len(block)))]
    return b"WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers).encode() + b"\r\n" + block + b"\r\n\r\n"


HTTP_RESPONSE = "application/http; msgtype=response"
PAGE = "<html><head><title>T</title></head><body><p>Café {}</p></body></html>"
RU_PAGE = '<html><head><meta charset="windows-1251"></head><body><p>Привет</p></body></html>'
CHUNKED = gzip.compress(PAGE.format("gzip").encode())  # sent gzipped in two chunks, as wget stores it
CHUNKED = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, CHUNKED[:10], len(CHUNKED) - 10, CHUNKED[10:])
RECORDS = [  # (record, the page's text or None, the skip rule or None)
    (warc_record("warcinfo", None, b"software: jaxlm tests\r\n", "application/warc-fields"), None, None),
    (warc_record("request", "http://a.test/1", b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
                 "application/http; msgtype=request"), None, None),
    (warc_record("response", "http://a.test/1", http("200 OK", {"Content-Type": "text/html; charset=utf-8"},
                                                     PAGE.format(1).encode()), HTTP_RESPONSE), PAGE.format(1), None),
    (warc_record("response", "http://a.test/logo.png", http("200 OK", {"Content-Type": "image/png"},
                                                            b"\x89PNG\r\n\x1a\n\x00\x00"), HTTP_RESPONSE), None, "not_html"),
    (warc_record("response", "http://a.test/gone", http("404 Not Found", {"Content-Type": "text/html"},
                                                        b"<html>missing</html>"), HTTP_RESPONSE), None, "http_status"),
    (warc_record("response", "http://a.test/latin", http("200 OK", {"Content-Type": "text/html; charset=ISO-8859-1"},
                                                         b"<html><p>caf\xe9 \x93quoted\x94</p></html>"), HTTP_RESPONSE),
     "<html><p>café “quoted”</p></html>", None),  # labelled Latin-1, read as windows-1252 like a browser
    (warc_record("response", "http://a.test/ru", http("200 OK", {"Content-Type": "text/html"},
                                                      RU_PAGE.encode("cp1251")),
                 HTTP_RESPONSE), RU_PAGE, None),
    (warc_record("response", "http://a.test/gz", http("200 OK", {"Content-Type": "text/html", "Content-Encoding": "gzip",
                                                                 "Transfer-Encoding": "chunked"}, CHUNKED),
                 HTTP_RESPONSE), PAGE.format("gzip"), None),
    (warc_record("resource", "file:///site/index.html", b"<html><p>a resource page</p></html>", "text/html"),
     "<html><p>a resource page</p></html>", None),
    (warc_record("metadata", "http://a.test/1", b"fetchTimeMs: 12\r\n", "application/warc-fields"), None, None),
    (warc_record("response", "http://a.test/bytes", http("200 OK", {"Content-Type": "text/html"}, b"<html><p>bad \xff</p></html>"),
                 HTTP_RESPONSE), "<html><p>bad \ufffd</p></html>", None),
    (warc_record("response", "http://a.test/moved", http("301 Moved Permanently",
                                                         {"Location": "/1", "Content-Type": "text/html"}, b""),
                 HTTP_RESPONSE), None, "http_status"),
]
OFFSETS = [sum(len(r) for r, _, _ in RECORDS[:i]) for i in range(len(RECORDS))]  # in the uncompressed WARC
WARC = b"".join(r for r, _, _ in RECORDS)


def write_warcs(folder) -> dict[str, bytes]:
    """The same records as .warc, as .warc.gz with a gzip member per record (the standard way),
    and gzipped as a whole."""
    files = {"plain.warc": WARC, "members.warc.gz": b"".join(gzip.compress(r, mtime=0) for r, _, _ in RECORDS),
             "whole.warc.gz": gzip.compress(WARC, mtime=0)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def read_warc(path, name="x.warc"):
    stats = StageStats("read")
    return list(read_file(SourceConfig("w", "warc", paths=[str(path)]), str(path), name, stats)), stats


def test_warc_html_responses_become_documents(tmp_path):
    files = write_warcs(tmp_path)
    for name in files:
        docs, report = read_warc(tmp_path / name, name)
        pages = [(i, text) for i, (_, text, _) in enumerate(RECORDS) if text is not None]
        assert [(d.id, d.text) for d in docs] == [(f"w/{name}:{OFFSETS[i]}", text) for i, text in pages], name
        assert [d.meta["url"] for d in docs] == ["http://a.test/1", "http://a.test/latin", "http://a.test/ru",
                                                 "http://a.test/gz", "file:///site/index.html", "http://a.test/bytes"]
        assert report.removed == {"read:not_html": 1, "read:http_status": 2}
        assert report.examples["read:http_status"] == [f"w/{name}:{OFFSETS[4]}", f"w/{name}:{OFFSETS[11]}"]
        assert report.examples["read:not_html"] == [f"w/{name}:{OFFSETS[3]}"]
        assert report.counters == {"warc_records:warcinfo": 1, "warc_records:request": 1, "warc_records:response": 8,
                                   "warc_records:resource": 1, "warc_records:metadata": 1, "repaired:invalid_utf8": 1}
    for offset in OFFSETS:  # an id's offset is where its record starts
        assert WARC[offset:offset + 10] == b"WARC/1.0\r\n"

    # the html_extract stage turns them into text, as for an html source
    assert [HtmlExtract().map(d).text for d in (docs[0], docs[3])] == ["Café 1", "Café gzip"]


def record_end(i: int) -> int:
    return OFFSETS[i] + len(RECORDS[i][0])


def test_warc_cut_anywhere_keeps_the_records_before_and_says_where(tmp_path):
    """Every truncation inside a record is counted at that record's offset; a cut between records
    (or in their closing CRLF CRLF, which holds no data) is a shorter, valid WARC."""
    path = tmp_path / "cut.warc"
    for n in range(5, len(WARC), 5):
        path.write_bytes(WARC[:n])
        docs, report = read_warc(path)
        i = max(k for k in range(len(RECORDS)) if OFFSETS[k] <= n)  # the record the cut falls in
        whole = n >= record_end(i) - 4
        kept = [OFFSETS[k] for k in range(len(RECORDS)) if RECORDS[k][1] is not None and (k < i or (k == i and whole))]
        assert [d.id for d in docs] == [f"w/x.warc:{o}" for o in kept], n
        valid = whole or n == OFFSETS[i]
        assert skipped(report, "corrupt_file") == ((0, []) if valid else (1, [f"w/x.warc:{OFFSETS[i]}"])), n


def test_warc_damaged_gzip_and_bad_records(tmp_path):
    members = [gzip.compress(r, mtime=0) for r, _, _ in RECORDS]
    starts = [sum(len(m) for m in members[:i]) for i in range(len(members))]
    data = b"".join(members)
    latin = RECORDS[5][0]
    length = latin[latin.index(b"Content-Length: "):].split(b"\r\n")[0]
    cases = {  # name: (bytes, the records read whole before the damage, where reading stopped)
        "cut.warc.gz": (data[: starts[6] + len(members[6]) // 2], 6, OFFSETS[6]),  # a member cut in half
        # only the member's CRC and size are cut: its page is whole and kept, the damage reported there
        "trailer.warc.gz": (data[: starts[6] + len(members[6]) - 3], 7, OFFSETS[6]),
        # the member of record 5 breaks while record 4's closing blank lines are read: the place is
        # the last record reached
        "zeroed.warc.gz": (data[: starts[5] + 40] + bytes(30) + data[starts[5] + 70:], 5, OFFSETS[4]),
        "garbage.warc": (WARC[: OFFSETS[3]] + b"<html>not a record</html>\r\n" + WARC[OFFSETS[3]:], 3, OFFSETS[3]),
        # a Content-Length too short: the record is cut ("HTTP/1.1 2", no status 200) and the rest of
        # its block is no record header
        "short.warc": (WARC[: OFFSETS[5]] + latin.replace(length, b"Content-Length: 10") + WARC[record_end(5):], 5, None),
        "no_length.warc": (WARC[: OFFSETS[5]] + latin.replace(length + b"\r\n", b"") + WARC[record_end(5):], 5, OFFSETS[5]),
    }
    for name, (content, whole, stop) in cases.items():
        (tmp_path / name).write_bytes(content)
        docs, report = read_warc(tmp_path / name, name)
        kept = [f"w/{name}:{OFFSETS[k]}" for k in range(whole) if RECORDS[k][1] is not None]
        count, places = skipped(report, "corrupt_file")
        assert count == 1, (name, report.removed)
        if stop is None:  # reading stops inside the short record's block
            assert [d.id for d in docs] == kept and OFFSETS[5] < int(places[0].rsplit(":", 1)[1]) < record_end(5)
        else:
            assert [d.id for d in docs] == kept and places == [f"w/{name}:{stop}"], (name, [d.id for d in docs], places)

    (tmp_path / "page.warc").write_bytes(b"<html><body>a page, not an archive</body></html>")
    (tmp_path / "image.warc.gz").write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"))
    (tmp_path / "empty.warc").write_bytes(b"")
    (tmp_path / "fake.warc.gz").write_bytes(b"WARC/1.0 but not gzip at all")
    (tmp_path / "zz.warc").write_bytes(WARC)
    docs, report = read_source_docs(SourceConfig("w", "warc", paths=[str(tmp_path / n) for n in (
        "page.warc", "image.warc.gz", "empty.warc", "fake.warc.gz", "zz.warc")]))
    assert report.removed == {"read:not_warc": 2, "read:empty_file": 1, "read:corrupt_file": 1,
                              "read:not_html": 1, "read:http_status": 2}
    assert report.examples["read:not_warc"] == ["w/page.warc", "w/image.warc.gz"]
    assert report.examples["read:corrupt_file"] == ["w/fake.warc.gz:0"]
    assert len(docs) == 6 and all(d.id.startswith("w/zz.warc:") for d in docs)  # the next file is read whole


def test_warc_page_with_a_broken_gzip_body_is_one_corrupt_record(tmp_path):
    rnd = random.Random(0)  # text that compresses little, so the body spans several of warcio's reads
    page = ("<html><body><p>" + "".join(rnd.choice("abcdefghij ") for _ in range(60_000)) + "</p></body></html>").encode()
    whole = gzip.compress(page, mtime=0)
    flushed = zlib.compressobj(6, zlib.DEFLATED, 31)
    broken = flushed.compress(page) + flushed.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 20  # then a reserved block type
    for body, rule in ((whole, None), (broken, "corrupt_record"), (whole[:-100], "corrupt_record")):
        record = warc_record("response", "http://a.test/big", http("200 OK", {"Content-Type": "text/html",
                                                                              "Content-Encoding": "gzip"}, body), HTTP_RESPONSE)
        (tmp_path / "big.warc").write_bytes(WARC[: OFFSETS[3]] + record + WARC[OFFSETS[3]:])
        docs, report = read_warc(tmp_path / "big.warc")
        after = [text for _, text, _ in RECORDS[3:] if text is not None]
        assert [d.text for d in docs] == [PAGE.format(1)] + ([page.decode()] if rule is None else []) + after
        assert report.examples.get(f"read:{rule}") == ([f"w/x.warc:{OFFSETS[3]}"] if rule else None)
        assert report.removed["read:http_status"] == 2  # the records after it are read


def test_warc_source_needs_html_extract(tmp_path):
    (tmp_path / "a.warc").write_bytes(WARC)
    raw = {"output": str(tmp_path / "out"), "sources": [{"name": "crawl", "type": "warc", "paths": [str(tmp_path / "a.warc")]}]}
    with pytest.raises(ConfigError, match="source 'crawl' is warc but no html_extract stage applies to it"):
        config_from_dict(raw)
    config_from_dict({**raw, "stages": [{"type": "html_extract"}]})


# --- Hugging Face datasets ----------------------------------------------------------------------


@pytest.fixture
def hf_files(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"text": "a one", "n": 1}, {"text": "a two", "n": 2}, {"text": None, "n": 3}, {"text": "a four", "n": 4})) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"text": "b one", "n": 5}, {"n": 6}, {"text": "b three é", "n": 7})) + "\n")
    return tmp_path


def test_hf_streams_a_dataset_as_shards(hf_files):
    src = SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl"), str(hf_files / "b.jsonl")])
    shards = resolve_files(src)
    assert shards == ["train-00000-of-00002", "train-00001-of-00002"]  # a shard per data file: tasks divide them
    stats = StageStats("read")
    docs = list(read_source(src, shards, stats))
    assert [(d.id, d.text) for d in docs] == [
        ("hub/train-00000-of-00002:0", "a one"), ("hub/train-00000-of-00002:1", "a two"),
        ("hub/train-00000-of-00002:3", "a four"), ("hub/train-00001-of-00002:0", "b one"),
        ("hub/train-00001-of-00002:2", "b three é")]
    assert skipped(stats, "missing_text_field") == (2, ["hub/train-00000-of-00002:2", "hub/train-00001-of-00002:1"])
    # one task reads one shard
    one = list(read_file(src, shards[1], shards[1], StageStats("read")))
    assert [d.text for d in one] == ["b one", "b three é"]
    docs, report = read_source_docs(dataclasses.replace(src, text_field="n"))  # a column of numbers
    assert docs == [] and skipped(report, "text_field_not_a_string") == (7, [f"hub/train-00000-of-00002:{i}" for i in range(4)]
                                                                            + ["hub/train-00001-of-00002:0"])


def test_hf_prepared_in_the_cache(hf_files, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_files / "cache"))
    src = SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl"), str(hf_files / "b.jsonl")],
                       streaming=False, text_field="text")
    docs, report = read_source_docs(src)
    assert [d.text for d in docs] == ["a one", "a two", "a four", "b one", "b three é"]
    assert report.removed == {"read:missing_text_field": 2}
    assert os.listdir(hf_files / "cache")


def test_hf_bad_input(hf_files, monkeypatch):
    (hf_files / "broken.jsonl").write_text('{"text": "fine"}\n{broken\n')
    src = SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl"), str(hf_files / "broken.jsonl")])
    docs, report = read_source_docs(src)
    assert [d.text for d in docs] == ["a one", "a two", "a four"]  # the broken file's shard stops where it broke
    assert skipped(report, "stream_error") == (1, ["hub/train-00001-of-00002:0 (ArrowInvalid)"])

    with pytest.raises(SourceError, match="has no column 'content'; its columns are text, n; set sources.hub.text_field"):
        resolve_files(SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl")], text_field="content"))
    with pytest.raises(SourceError, match=r"cannot load the Hugging Face dataset 'json' .*FileNotFoundError"):
        resolve_files(SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "nope.jsonl")]))
    with pytest.raises(SourceError, match=r"split 'validation'.*Bad split"):
        resolve_files(SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl")],
                                   dataset_split="validation"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(SourceError, match=r'the datasets package is not installed; pip install "jaxlm\[hf\]"'):
        resolve_files(SourceConfig("hub", "hf", dataset="json", paths=[str(hf_files / "a.jsonl")]))


@pytest.mark.parametrize("source, message", [
    ({"type": "hf"}, "sources.s.dataset is required for an hf source"),
    ({"type": "jsonl", "paths": ["x"], "dataset": "json"}, "sources.s.dataset applies to hf sources only"),
    ({"type": "txt", "paths": ["x"], "streaming": False}, "sources.s.streaming applies to hf sources only"),
    ({"type": "hf", "dataset": "d", "dataset_split": ""}, "sources.s.dataset_split must name a split"),
    ({"type": "pydoc_topics", "paths": ["x"]}, "sources.s.paths is set but a pydoc_topics source"),
])
def test_source_config_errors(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"output": str(tmp_path), "sources": [{"name": "s", **source}]})


# --- end to end ---------------------------------------------------------------------------------


def test_pipeline_reads_warc_zst_and_hf_sources(hf_files, tmp_path):
    write_warcs(tmp_path)
    raw = b"".join(b'{"text": "zst line %d"}\n' % i for i in range(1, 6))
    (tmp_path / "z.jsonl.zst").write_bytes(zst_frames(raw))
    cfg = config_from_dict({
        "output": str(tmp_path / "out"),
        "sources": [{"name": "crawl", "type": "warc", "paths": [str(tmp_path / "*.warc*")]},
                    {"name": "zst", "type": "jsonl", "paths": [str(tmp_path / "z.jsonl.zst")]},
                    {"name": "hub", "type": "hf", "dataset": "json", "paths": [str(hf_files / "a.jsonl"),
                                                                              str(hf_files / "b.jsonl")]}],
        "stages": [{"type": "html_extract", "sources": ["crawl"]}],
        "tasks": 2, "workers": 1, "split": {"val_fraction": 0.0},
        "tokenizer": {"model_type": "char", "vocab_size": None},
    })
    manifest = prepare(cfg, log=lambda _: None)
    read_stats = manifest["stages"][0]
    assert read_stats["counters"]["documents:crawl"] == 3 * 6
    assert read_stats["counters"]["documents:zst"] == 5
    assert read_stats["counters"]["documents:hub"] == 5
    assert read_stats["removed"] == {"read:not_html": 3, "read:http_status": 6, "read:missing_text_field": 2}
    extract = manifest["stages"][1]
    assert extract["stage"] == "html_extract" and extract["documents_in"] == 28
    pages = ["Café 1", "café “quoted”", "Привет", "Café gzip", "a resource page", "bad \ufffd"]
    assert decoded_records(manifest, cfg.output)["train"] == (
        pages * 3 + [f"zst line {i}" for i in range(1, 6)] + ["a one", "a two", "a four", "b one", "b three é"])
