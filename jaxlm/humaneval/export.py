"""Ratings out of the store as CSV or JSON: one row per rating with its prompt, both systems and
responses, the order they were shown in, the choice, the winner and the comment.

CSV cells that begin with = + - @ (or a tab or carriage return) get a leading ' so a spreadsheet
shows model text as text instead of running it as a formula; the JSON export is verbatim.
"""

from __future__ import annotations

import csv
import datetime
import io
import json

COLUMNS = ("rating", "rated_at", "rater", "item", "prompt_id", "sample", "shared", "prompt", "first_system",
           "second_system", "left_system", "choice", "winner", "comment", "seconds", "first_response",
           "second_response")


def _row(r: dict) -> dict:
    out = {k: r[k] for k in COLUMNS}
    out["rated_at"] = datetime.datetime.fromtimestamp(r["rated_at"], datetime.timezone.utc).isoformat()
    out["seconds"] = round(r["seconds"], 3)
    return out


def to_json(rows: list[dict]) -> str:
    return json.dumps([_row(r) for r in rows], indent=1, ensure_ascii=False)


def _cell(value):
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in _row(r).items()})
    return buf.getvalue()
