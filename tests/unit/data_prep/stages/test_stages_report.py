from data_prep.document import Document
from data_prep.stages import StageStats
from data_prep.stages.report import histogram_buckets, manifest_stages, render_report, write_report


def sample_stats():
    quality = StageStats("gopher_quality", docs_in=10, bytes_in=1000, docs_out=7, bytes_out=800)
    for i in range(3):
        quality.remove(Document("x" * 50, f"web/a.jsonl:{i}", "web"), "word_count")
    dedup = StageStats("minhash_dedup", docs_in=7, bytes_in=800, docs_out=5, bytes_out=600)
    mix = StageStats("mix", docs_in=5, bytes_in=600, docs_out=6, bytes_out=700,
                     counters={"units_out:web": 350, "units_out:books": 350, "repeated_docs:books": 1})
    reports = {"minhash_dedup": {"documents": 7, "removed": 2, "clusters": 1, "cluster_sizes": {"3": 1},
                                 "s_curve": "MinHash LSH S-curve: 14 bands x 8 rows"},
               "mix": {"unit": "bytes", "units_in": {"web": 500, "books": 100},
                       "target_shares": {"web": 0.5, "books": 0.5}, "rates": {"web": 0.6, "books": 3.0}}}
    return [quality, dedup, mix], reports


def test_histogram_buckets():
    assert histogram_buckets({2: 5, 3: 2, 4: 1, 7: 3, 100: 1}) == [("2", 5), ("3-4", 3), ("5-8", 3), ("65-128", 1)]


def test_manifest_stages():
    stats, _ = sample_stats()
    first = manifest_stages(stats)[0]
    assert first == {"stage": "gopher_quality", "documents_in": 10, "documents_out": 7, "bytes_in": 1000,
                     "bytes_out": 800, "removed": {"gopher_quality:word_count": 3},
                     "examples": {"gopher_quality:word_count": ["web/a.jsonl:0", "web/a.jsonl:1", "web/a.jsonl:2"]},
                     "counters": {}}


def test_report_markdown(tmp_path):
    stats, reports = sample_stats()
    text = render_report(stats, reports, title="demo")
    assert text.startswith("# demo\n\n10 documents (1,000 bytes) in, 6 documents (700 bytes) out.")
    assert "| gopher_quality | 10 | 7 | 3 | 1,000 | 800 | 80.0% |" in text
    assert "| gopher_quality:word_count | 3 | 30.0% | 150 | `web/a.jsonl:0`, `web/a.jsonl:1`, `web/a.jsonl:2` |" in text
    assert "| 3-4 | 1 |" in text and "MinHash LSH S-curve" in text
    assert "| books | 0.167 | 0.500 | 0.500 | 3.000 |" in text
    assert "| mix | repeated_docs:books | 1 |" in text
    write_report(tmp_path / "report.md", stats, reports)
    assert (tmp_path / "report.md").read_text().startswith("# data_prep report")
