"""data_prep readers: every source type, and bad input counted with its place, never lost silently."""

import gzip
import json

import pyarrow.parquet as pq
import pytest

from data_prep import corpus
from data_prep.config import SourceConfig
from data_prep.errors import SourceError
from data_prep.sources import decode_utf8, resolve_files
from tests.helpers import read_source_docs, repaired, skipped


def test_txt_separators(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nline two\n\n  \n\nsecond para\n")
    (tmp_path / "b.txt").write_text("only\n")
    whole, _ = read_source_docs(SourceConfig("t", "txt", paths=[str(tmp_path / "*.txt")]))
    assert [(d.id, d.text) for d in whole] == [("t/a.txt:0", "first para\nline two\n\n  \n\nsecond para\n"), ("t/b.txt:0", "only\n")]
    paras, _ = read_source_docs(SourceConfig("t", "txt", paths=[str(tmp_path / "a.txt")], doc_separator="blank_line"))
    assert [d.text for d in paras] == ["first para\nline two", "second para"]
    lines, report = read_source_docs(SourceConfig("t", "txt", paths=[str(tmp_path / "a.txt")], doc_separator="line"))
    assert [(d.id, d.text) for d in lines] == [("t/a.txt:1", "first para"), ("t/a.txt:2", "line two"), ("t/a.txt:6", "second para")]
    assert skipped(report, "blank_line") == (3, ["t/a.txt:3", "t/a.txt:4", "t/a.txt:5"])


def test_bad_bytes_empty_files_and_malformed_json_are_counted(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 na\xefve".encode("latin-1") + b" ok \xf0\x9f\x98\x80")
    (tmp_path / "x.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))  # binary
    docs, report = read_source_docs(SourceConfig("t", "txt", paths=[str(tmp_path / "*.txt")]))
    assert [d.text for d in docs] == ["caf\ufffd na\ufffdve ok 😀"]
    assert skipped(report, "empty_file") == (1, ["t/empty.txt"])
    assert skipped(report, "binary_file") == (1, ["t/x.txt"])
    assert repaired(report, "invalid_utf8") == (2, ["t/latin1.txt"])

    lines = [json.dumps({"text": "good \ufffd one"}), "{not json", json.dumps({"body": "x"}), "",
             json.dumps({"text": 5}), json.dumps(["text"]), json.dumps({"text": ""}), json.dumps({"text": "lone \ud800 surrogate"})]
    raw = "\n".join(lines).encode() + b"\n" + b'{"text": "bad \xff byte"}\n'
    (tmp_path / "d.jsonl").write_bytes(raw)
    with gzip.open(tmp_path / "e.jsonl.gz", "wb") as f:
        f.write(raw)
    (tmp_path / "f.jsonl").write_bytes(b'{"text": "\x00\x01\x02"}\n')  # a raw NUL: not JSON text
    docs, report = read_source_docs(SourceConfig("j", "jsonl", paths=[str(tmp_path / p) for p in ("d.jsonl", "e.jsonl.gz", "f.jsonl")]))
    texts = ["good \ufffd one", "", "lone \ufffd surrogate", "bad \ufffd byte"]
    assert [d.text for d in docs] == texts * 2
    assert [d.id for d in docs[:4]] == ["j/d.jsonl:1", "j/d.jsonl:7", "j/d.jsonl:8", "j/d.jsonl:9"]
    assert skipped(report, "malformed_json") == (2, ["j/d.jsonl:2", "j/e.jsonl.gz:2"])
    assert skipped(report, "missing_text_field") == (4, ["j/d.jsonl:3", "j/d.jsonl:6", "j/e.jsonl.gz:3", "j/e.jsonl.gz:6"])
    assert skipped(report, "blank_line")[0] == 2
    assert skipped(report, "text_field_not_a_string") == (2, ["j/d.jsonl:5", "j/e.jsonl.gz:5"])
    assert skipped(report, "binary_file") == (1, ["j/f.jsonl"])
    assert repaired(report, "invalid_utf8") == (2, ["j/d.jsonl", "j/e.jsonl.gz"])
    assert repaired(report, "lone_surrogate")[0] == 2


def test_decode_utf8_counts_each_bad_byte():
    assert decode_utf8("ok é".encode()) == ("ok é", 0)
    assert decode_utf8(b"a\xff\xfeb\xc3") == ("a\ufffd\ufffdb\ufffd", 3)
    assert decode_utf8("\ufffd".encode()) == ("\ufffd", 0)  # a real U+FFFD is not a repair


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")

    pq.write_table(pa.table({"content": ["one", None, "three 😀", ""], "n": [1, 2, 3, 4]}), tmp_path / "p.parquet")
    docs, report = read_source_docs(SourceConfig("p", "parquet", paths=[str(tmp_path / "p.parquet")], text_field="content"))
    assert [(d.id, d.text) for d in docs] == [("p/p.parquet:0", "one"), ("p/p.parquet:2", "three 😀"), ("p/p.parquet:3", "")]
    assert skipped(report, "missing_text_column") == (0, [])
    assert skipped(report, "missing_text_field") == (1, ["p/p.parquet:1"])
    # a file without the column, or no parquet at all, is counted with the columns it has; never fatal
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    docs, report = read_source_docs(SourceConfig("p", "parquet", paths=[str(tmp_path / "p.parquet"), str(tmp_path / "bad.parquet")]))
    assert docs == [] and report.removed == {"read:missing_text_column": 1, "read:not_parquet": 1}
    assert report.examples == {"read:missing_text_column": ["p/p.parquet (columns: content, n)"], "read:not_parquet": ["p/bad.parquet"]}


def test_missing_paths_fail_naming_them(tmp_path):
    with pytest.raises(SourceError, match=r"source 's': file '.*nope.txt' does not exist"):
        resolve_files(SourceConfig("s", "txt", paths=[str(tmp_path / "nope.txt")]))
    with pytest.raises(SourceError, match=r"source 's': no file matches '.*\*.jsonl'"):
        resolve_files(SourceConfig("s", "jsonl", paths=[str(tmp_path / "*.jsonl")]))
    with pytest.raises(SourceError, match="is a folder"):
        resolve_files(SourceConfig("s", "txt", paths=[str(tmp_path)]))


def test_corrupt_gzip_keeps_what_came_before_and_says_where_it_broke(tmp_path):
    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(1, 20_001)))
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "u.jsonl").write_text('{"text": "next file"}\n')
    docs, report = read_source_docs(SourceConfig("g", "jsonl", paths=[str(tmp_path / "t.jsonl.gz"), str(tmp_path / "u.jsonl")]))
    n = len(docs) - 1
    assert 0 < n < 20_000 and [d.text for d in docs] == [f"line {i}" for i in range(1, n + 1)] + ["next file"]
    assert skipped(report, "corrupt_file") == (1, [f"g/t.jsonl.gz:{n + 1}"])


def test_builtin_corpus_sources():
    docs, report = read_source_docs(SourceConfig("pydoc", "pydoc_topics"))
    topics = corpus.pydoc_topics()
    assert len(docs) == len(topics) > 50 and docs[0].id == f"pydoc/topics:{topics[0][0]}"
    files = corpus.stdlib_files(max_files=5)
    assert len(files) == 5 and files == sorted(files) and files == corpus.stdlib_files(max_files=5)
    capped = corpus.stdlib_files(max_bytes=200_000)
    assert 0 < sum(len(open(f"{corpus.stdlib_dir()}/{f}", "rb").read()) for f in capped) <= 200_000
    docs, report = read_source_docs(SourceConfig("lib", "python_stdlib", max_files=5))
    assert len(docs) == 5 and report.removed == {}  # empty __init__.py files are not chosen
    assert all(d.id.startswith("lib/") and d.id.endswith(".py:0") and d.text for d in docs)
    assert not any("/test/" in f or f.startswith("test/") for f in corpus.stdlib_files())
