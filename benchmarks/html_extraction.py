"""HTML -> main text on the article extraction benchmark: token-level precision/recall/F1.

Data: ../shared/data/html/article_extraction_benchmark (181 real pages, gold article bodies;
from scrapinghub/article-extraction-benchmark). The metric is that benchmark's: per page,
counts of word 4-gram shingles (words = \\w+ runs) matched between gold and extracted text,
normalised per page, precision and recall averaged over pages, F1 from the two averages.
Reference: trafilatura 2.0.0 scores F1 0.958 there.

    python benchmarks/html_extraction.py [--data DIR]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.document import Document  # noqa: E402
from data_prep.stages import StageStats, build_stage  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "html" / "article_extraction_benchmark"
_TOKEN = re.compile(r"\w+")


def shingle_counts(text: str, n: int = 4) -> collections.Counter:
    tokens = _TOKEN.findall(text or "")
    if len(tokens) < n:  # a short text is one (short) shingle, or none
        return collections.Counter([tuple(tokens)] if tokens else [])
    return collections.Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def page_scores(gold: str, predicted: str) -> tuple[float, float, float]:
    """(tp, fp, fn) shingle counts of one page, divided by their sum so every page weighs the same."""
    g, p = shingle_counts(gold), shingle_counts(predicted)
    tp = sum((g & p).values())
    fp = sum((p - g).values())
    fn = sum((g - p).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def precision_recall_f1(pages: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    def precision(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fp == 0 else tp / (tp + fp))

    def recall(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fn == 0 else tp / (tp + fn))

    ps = [precision(*x) for x in pages if x[0] + x[1] > 0]
    rs = [recall(*x) for x in pages if x[0] + x[2] > 0]
    p, r = sum(ps) / len(ps), sum(rs) / len(rs)
    return p, r, 2 * p * r / (p + r)


def run_stages_on(specs: list[dict], html: str) -> str:
    docs = [Document(html, "page", "web")]
    for spec in specs:
        stage = build_stage(spec)
        docs = list(stage(docs, StageStats(stage.name)))
    return docs[0].text if docs else ""


def candidates():
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    ours = [{"type": "html_extract"}, {"type": "unicode_fix"}]
    return {
        "data_prep cleaning (html_extract + unicode_fix)": lambda h: run_stages_on(ours, h),
        "trafilatura (fast, no comments)": lambda h: trafilatura.extract(h, include_comments=False, fast=True) or "",
        "trafilatura (favor_precision, no comments)": lambda h: trafilatura.extract(
            h, include_comments=False, favor_precision=True) or "",
        "trafilatura (no comments)": lambda h: trafilatura.extract(h, include_comments=False) or "",
        "trafilatura (defaults)": lambda h: trafilatura.extract(h) or "",
        "resiliparse (main_content)": lambda h: extract_plain_text(HTMLTree.parse(h), main_content=True),
        "resiliparse (whole page)": lambda h: extract_plain_text(HTMLTree.parse(h), main_content=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    truth_file = args.data / "ground-truth.json"
    if not truth_file.is_file():
        sys.exit(f"benchmark data not found at {args.data} (needs ground-truth.json and html/)")
    truth = json.loads(truth_file.read_text())
    pages = {k: gzip.decompress((args.data / "html" / f"{k}.html.gz").read_bytes()).decode("utf-8", "replace")
             for k in truth}
    megabytes = sum(len(h.encode()) for h in pages.values()) / 1e6
    from importlib.metadata import version

    print(f"{len(pages)} pages, {megabytes:.1f} MB of HTML; trafilatura {version('trafilatura')}, "
          f"resiliparse {version('resiliparse')}; one process\n")
    print(f"{'extractor':50s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'MB/s':>6s} {'pages/s':>8s}  (per CPU second)")
    for name, extract in candidates().items():
        extract(next(iter(pages.values())))  # warm up (imports, lazy tables)
        start = time.process_time()  # CPU time: the machine may be shared
        outputs = {k: extract(h) for k, h in pages.items()}
        seconds = time.process_time() - start
        p, r, f1 = precision_recall_f1([page_scores(truth[k]["articleBody"], outputs[k]) for k in truth])
        print(f"{name:50s} {p:9.3f} {r:7.3f} {f1:6.3f} {megabytes / seconds:6.1f} {len(pages) / seconds:8.1f}")
    print("\nreference (benchmark README): trafilatura 2.0.0 F1 0.958, precision 0.938, recall 0.978")


if __name__ == "__main__":
    main()
