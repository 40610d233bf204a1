"""Report data for the manifest and a `report.md` a person can read."""

from __future__ import annotations

import pathlib
from typing import Any

from data_prep.stages.base import StageStats
from data_prep.stages.files import atomic_write_bytes
from data_prep.stages.mixing import shares


def manifest_stages(stats: list[StageStats]) -> list[dict[str, Any]]:
    """Per stage: documents and bytes in and out, removals per rule with their first places
    ("file:line" or document id; removals and repairs) and counters (manifest.json "stages")."""
    return [{"stage": s.stage, "documents_in": s.docs_in, "documents_out": s.docs_out,
             "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "removed": dict(sorted(s.removed.items())),
             "examples": dict(sorted(s.examples.items())), "counters": dict(sorted(s.counters.items()))}
            for s in stats]


def histogram_buckets(sizes: dict[int | str, int]) -> list[tuple[str, int]]:
    """Cluster sizes in power-of-two buckets: 2, 3-4, 5-8, 9-16, ..."""
    buckets: dict[int, int] = {}
    for size, count in sizes.items():
        size = int(size)
        top = 2
        while top < size:
            top *= 2
        buckets[top] = buckets.get(top, 0) + count
    out = []
    for top in sorted(buckets):
        lo = top // 2 + 1 if top > 2 else 2
        out.append((str(top) if lo == top else f"{lo}-{top}", buckets[top]))
    return out


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_report(stats: list[StageStats], reports: dict[str, dict[str, Any]], title: str = "data_prep report") -> str:
    lines = [f"# {title}", ""]
    if stats:
        first, last = stats[0], stats[-1]
        lines += [f"{first.docs_in:,} documents ({first.bytes_in:,} bytes) in, "
                  f"{last.docs_out:,} documents ({last.bytes_out:,} bytes) out.", ""]
    lines += ["## Stages", ""]
    lines += _table(["stage", "docs in", "docs out", "removed", "bytes in", "bytes out", "bytes kept"],
                    [[s.stage, f"{s.docs_in:,}", f"{s.docs_out:,}", f"{s.docs_removed:,}", f"{s.bytes_in:,}",
                      f"{s.bytes_out:,}", _pct(s.bytes_out, s.bytes_in)] for s in stats])
    rows = []
    for s in stats:
        for reason, n in sorted(s.removed.items(), key=lambda kv: -kv[1]):
            rows.append([reason, f"{n:,}", _pct(n, s.docs_in), f"{s.removed_bytes.get(reason, 0):,}",
                         ", ".join(f"`{i}`" for i in s.examples.get(reason, []))])
    if rows:
        lines += ["## Removals per rule", ""]
        lines += _table(["reason", "docs", "of stage input", "bytes", "examples"], rows)
    for s in stats:
        report = reports.get(s.stage)
        if "cluster_sizes" in (report or {}):
            lines += [f"## {s.stage}: duplicate clusters", "",
                      f"{report['removed']:,} of {report['documents']:,} documents removed in "
                      f"{report['clusters']:,} clusters (the smallest id of each cluster is kept).", ""]
            if report["cluster_sizes"]:
                lines += _table(["cluster size", "clusters"],
                                [list(b) for b in histogram_buckets(report["cluster_sizes"])])
            if "s_curve" in report:
                lines += ["```", report["s_curve"], "```", ""]
        if "indexed_ngrams" in (report or {}):
            lines += [f"## {s.stage}: evaluation-set contamination", "",
                      f"{report['ngram']}-gram index of {report['indexed_ngrams']:,} n-grams; policy "
                      f"`{report['policy']}`.", ""]
            lines += _table(["eval set", "indexed n-grams", "documents hit"],
                            [[name, f"{n:,}", f"{s.counters.get(f'docs_hit:{name}', 0):,}"]
                             for name, n in report["ngrams_per_eval_set"].items()])
        if "held_out_accuracy" in (report or {}):
            lines += [f"## {s.stage}: quality classifier", "",
                      f"Trained on {report['train_docs']:,} documents; held-out accuracy "
                      f"{report['held_out_accuracy']} on {report['held_out_docs']:,} (train {report['train_accuracy']}); "
                      f"action `{report['action']}`.", ""]
        if "target_shares" in (report or {}):
            reached = shares({src[len("units_out:"):]: n for src, n in s.counters.items() if src.startswith("units_out:")})
            before = shares(report["units_in"])
            lines += [f"## {s.stage}: source mix (in {report['unit']})", ""]
            lines += _table(["source", "share before", "target share", "share reached", "rate"],
                            [[src, f"{before.get(src, 0):.3f}", f"{t:.3f}", f"{reached.get(src, 0):.3f}",
                              f"{report['rates'].get(src, 0):.3f}"] for src, t in sorted(report["target_shares"].items())])
    other = [(s.stage, k, v) for s in stats for k, v in sorted(s.counters.items())
             if not k.startswith(("docs_hit:", "units_out:"))]
    if other:
        lines += ["## Other counts", ""]
        lines += _table(["stage", "count", "value"], [[a, b, f"{c:,}"] for a, b, c in other])
    return "\n".join(lines)


def write_report(path: str | pathlib.Path, stats: list[StageStats], reports: dict[str, dict[str, Any]],
                 title: str = "data_prep report") -> None:
    atomic_write_bytes(path, render_report(stats, reports, title).encode())
