"""A rating round in one SQLite file: its systems, prompts, responses and items (pairs of responses
to compare), the raters, which item each rater was shown (in which left/right order, and whether
they skipped it as one they cannot judge), and one row per rating. Every request opens its own connection and commits before it answers, in WAL mode
with full sync, so a rating acknowledged to the browser survives a crash or restart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sqlite3
import time
from typing import Iterator, NamedTuple, Optional, Sequence

from jaxlm.humaneval.errors import HumanEvalError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS systems (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (id INTEGER PRIMARY KEY, text TEXT NOT NULL, messages TEXT);
CREATE TABLE IF NOT EXISTS responses (
  system_id INTEGER NOT NULL REFERENCES systems(id), prompt_id INTEGER NOT NULL REFERENCES prompts(id),
  sample INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (system_id, prompt_id, sample));
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), sample INTEGER NOT NULL,
  first_system INTEGER NOT NULL REFERENCES systems(id), second_system INTEGER NOT NULL REFERENCES systems(id),
  shared INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
  rater_id INTEGER NOT NULL REFERENCES raters(id), item_id INTEGER NOT NULL REFERENCES items(id),
  left_system INTEGER NOT NULL REFERENCES systems(id), shown_at REAL NOT NULL,
  skipped_at REAL, PRIMARY KEY (rater_id, item_id));
CREATE TABLE IF NOT EXISTS ratings (
  id INTEGER PRIMARY KEY, rater_id INTEGER NOT NULL REFERENCES raters(id),
  item_id INTEGER NOT NULL REFERENCES items(id), left_system INTEGER NOT NULL REFERENCES systems(id),
  choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')), comment TEXT NOT NULL,
  shown_at REAL NOT NULL, rated_at REAL NOT NULL, UNIQUE (rater_id, item_id));
"""
CHOICES = ("left", "right", "tie", "both_bad")


@dataclasses.dataclass(frozen=True)
class Item:
    prompt: int  # index into the round's prompts
    sample: int
    first: int  # indices into the round's systems, first < second
    second: int
    shared: bool  # every rater rates it (for agreement)


class OpenItem(NamedTuple):
    id: int
    first: int
    second: int
    shared: bool
    ratings: int  # by anyone
    held: int  # other raters holding it unrated (shown since the lease began)


@dataclasses.dataclass(frozen=True)
class Rater:
    id: int
    name: str
    token: str


class Store:
    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise HumanEvalError(f"folder {folder!r} of the database does not exist; create it or give another --db")
        try:
            with self.connect() as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and "meta" not in tables:
                    raise HumanEvalError(f"{path!r} is an SQLite file of something else, not a rating round; "
                                         "give a new --db path")
                con.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HumanEvalError(f"cannot use {path!r} as the round's database ({e}); give a new --db path "
                                 "in a folder you can write") from None

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
            with con:  # commits on success, rolls back on error
                yield con
        finally:
            con.close()

    # --- the round ---------------------------------------------------------------------------

    def has_round(self) -> bool:
        return "fingerprint" in self.settings()

    def settings(self) -> dict:
        with self.connect() as con:
            return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}

    def create_round(self, systems: Sequence[tuple[str, str]], prompts: Sequence[tuple[str, Optional[list]]],
                     responses: dict[str, list[list[str]]], items: Sequence[Item], settings: dict) -> None:
        """Writes a whole round in one transaction: systems (name, source), prompts (text, chat
        messages or None), responses[system][prompt][sample], items, and settings (JSON values)."""
        with self.connect() as con:
            if con.execute("SELECT 1 FROM meta WHERE key = 'fingerprint'").fetchone():
                raise HumanEvalError(f"{self.path!r} already holds a round")
            for i, (name, source) in enumerate(systems):
                con.execute("INSERT INTO systems VALUES (?, ?, ?)", (i, name, source))
            for i, (text, messages) in enumerate(prompts):
                con.execute("INSERT INTO prompts VALUES (?, ?, ?)",
                            (i, text, None if messages is None else json.dumps(messages)))
            for s, (name, _) in enumerate(systems):
                con.executemany("INSERT INTO responses VALUES (?, ?, ?, ?)",
                                [(s, p, k, text) for p, per_prompt in enumerate(responses[name])
                                 for k, text in enumerate(per_prompt)])
            con.executemany("INSERT INTO items (prompt_id, sample, first_system, second_system, shared) "
                            "VALUES (?, ?, ?, ?, ?)",
                            [(it.prompt, it.sample, it.first, it.second, int(it.shared)) for it in items])
            settings = dict(settings, invite=secrets.token_urlsafe(18), admin=secrets.token_urlsafe(18),
                            created_at=time.time())
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()])

    def systems(self) -> list[str]:
        with self.connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM systems ORDER BY id")]

    def counts(self) -> dict:
        with self.connect() as con:
            one = lambda q: con.execute(q).fetchone()[0]  # noqa: E731
            return dict(prompts=one("SELECT COUNT(*) FROM prompts"), items=one("SELECT COUNT(*) FROM items"),
                        shared=one("SELECT COUNT(*) FROM items WHERE shared"),
                        rated_items=one("SELECT COUNT(DISTINCT item_id) FROM ratings"),
                        ratings=one("SELECT COUNT(*) FROM ratings"), raters=one("SELECT COUNT(*) FROM raters"),
                        skips=one("SELECT COUNT(*) FROM assignments WHERE skipped_at IS NOT NULL"))

    # --- raters ------------------------------------------------------------------------------

    def add_rater(self, name: str) -> Rater:
        """The rater of this name, made (with a fresh secret token) when new."""
        with self.connect() as con:
            con.execute("INSERT OR IGNORE INTO raters (name, token, created_at) VALUES (?, ?, ?)",
                        (name, secrets.token_urlsafe(18), time.time()))
            return Rater(*con.execute("SELECT id, name, token FROM raters WHERE name = ?", (name,)).fetchone())

    def rater(self, token: str) -> Optional[Rater]:
        with self.connect() as con:
            row = con.execute("SELECT id, name, token FROM raters WHERE token = ?", (token,)).fetchone()
        return Rater(*row) if row else None

    def raters(self) -> list[Rater]:
        with self.connect() as con:
            return [Rater(*r) for r in con.execute("SELECT id, name, token FROM raters ORDER BY id")]

    # --- showing items -----------------------------------------------------------------------

    def pending(self, rater_id: int) -> Optional[int]:
        """The item shown to this rater and neither rated nor skipped yet, if any."""
        with self.connect() as con:
            row = con.execute("SELECT a.item_id FROM assignments a WHERE a.rater_id = ? AND a.skipped_at IS NULL "
                              "AND NOT EXISTS "
                              "(SELECT 1 FROM ratings r WHERE r.rater_id = a.rater_id AND r.item_id = a.item_id) "
                              "ORDER BY a.shown_at LIMIT 1", (rater_id,)).fetchone()
        return row[0] if row else None

    def open_items(self, rater_id: int, leased_since: float) -> list[OpenItem]:
        """Items this rater has neither rated nor skipped, with who else rated or holds them."""
        with self.connect() as con:
            return [OpenItem(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in con.execute(
                "SELECT i.id, i.first_system, i.second_system, i.shared,"
                " (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id),"
                " (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.rater_id != ?"
                "   AND a.shown_at >= ? AND a.skipped_at IS NULL AND NOT EXISTS (SELECT 1 FROM ratings r"
                "   WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id))"
                " FROM items i WHERE NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = i.id AND r.rater_id = ?)"
                " AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.rater_id = ?"
                "   AND a.skipped_at IS NOT NULL)"
                " ORDER BY i.id", (rater_id, leased_since, rater_id, rater_id))]

    def pair_loads(self) -> dict[tuple[int, int], int]:
        """Ratings so far per pair of systems."""
        with self.connect() as con:
            return {(a, b): n for a, b, n in con.execute(
                "SELECT i.first_system, i.second_system, COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id "
                "GROUP BY i.first_system, i.second_system")}

    def rated_count(self, rater_id: int) -> int:
        with self.connect() as con:
            return con.execute("SELECT COUNT(*) FROM ratings WHERE rater_id = ?", (rater_id,)).fetchone()[0]

    def assign(self, rater_id: int, item_id: int, left_system: int) -> None:
        with self.connect() as con:
            con.execute("INSERT OR IGNORE INTO assignments (rater_id, item_id, left_system, shown_at) "
                        "VALUES (?, ?, ?, ?)", (rater_id, item_id, left_system, time.time()))

    def item_view(self, rater_id: int, item_id: int) -> dict:
        """What the rater sees of an item assigned to them: the prompt and the two responses in their
        screen order (system names are not part of it)."""
        with self.connect() as con:
            row = con.execute(
                "SELECT p.id, p.text, p.messages, i.sample, i.first_system, i.second_system, a.left_system "
                "FROM assignments a JOIN items i ON i.id = a.item_id JOIN prompts p ON p.id = i.prompt_id "
                "WHERE a.rater_id = ? AND a.item_id = ?", (rater_id, item_id)).fetchone()
            prompt_id, text, messages, sample, first, second, left = row
            right = second if left == first else first
            said = lambda s: con.execute("SELECT text FROM responses WHERE system_id = ? AND prompt_id = ? "  # noqa: E731
                                         "AND sample = ?", (s, prompt_id, sample)).fetchone()[0]
            return dict(item=item_id, prompt=text, messages=json.loads(messages) if messages else None,
                        left=said(left), right=said(right))

    def skip(self, rater_id: int, item_id: int) -> bool:
        """Marks an item shown to this rater as one they cannot judge: it is not shown to them again,
        counts as no rating, and an unshared one goes back to the others. False when already done."""
        with self.connect() as con:
            if con.execute("SELECT 1 FROM assignments WHERE rater_id = ? AND item_id = ?",
                           (rater_id, item_id)).fetchone() is None:
                raise HumanEvalError(f"item {item_id} was never shown to this rater")
            cur = con.execute("UPDATE assignments SET skipped_at = ? WHERE rater_id = ? AND item_id = ? AND "
                              "skipped_at IS NULL AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.rater_id = ? "
                              "AND r.item_id = ?)", (time.time(), rater_id, item_id, rater_id, item_id))
            return cur.rowcount == 1

    # --- ratings -----------------------------------------------------------------------------

    def add_rating(self, rater_id: int, item_id: int, choice: str, comment: str) -> bool:
        """Records a rating of an item shown to this rater; False when they had rated it already."""
        if choice not in CHOICES:
            raise HumanEvalError(f"choice must be one of {CHOICES}, got {choice!r}")
        with self.connect() as con:
            shown = con.execute("SELECT left_system, shown_at, skipped_at FROM assignments WHERE rater_id = ? "
                                "AND item_id = ?", (rater_id, item_id)).fetchone()
            if shown is None:
                raise HumanEvalError(f"item {item_id} was never shown to this rater")
            if shown[2] is not None:
                return False  # skipped already (a second key press): the skip stands
            cur = con.execute("INSERT OR IGNORE INTO ratings (rater_id, item_id, left_system, choice, comment, "
                              "shown_at, rated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (rater_id, item_id, shown[0], choice, comment, shown[1], time.time()))
            return cur.rowcount == 1

    def ratings(self) -> list[dict]:
        """Every rating with its item, prompt, systems and responses, oldest first."""
        with self.connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                "SELECT r.id AS rating, r.rated_at, w.name AS rater, r.item_id AS item, i.prompt_id AS prompt_id,"
                " i.sample, p.text AS prompt, s1.name AS first_system, s2.name AS second_system,"
                " sl.name AS left_system, r.choice, r.comment, r.rated_at - r.shown_at AS seconds, i.shared,"
                " (SELECT text FROM responses x WHERE x.system_id = i.first_system AND x.prompt_id = i.prompt_id"
                "   AND x.sample = i.sample) AS first_response,"
                " (SELECT text FROM responses x WHERE x.system_id = i.second_system AND x.prompt_id = i.prompt_id"
                "   AND x.sample = i.sample) AS second_response"
                " FROM ratings r JOIN raters w ON w.id = r.rater_id JOIN items i ON i.id = r.item_id"
                " JOIN prompts p ON p.id = i.prompt_id JOIN systems s1 ON s1.id = i.first_system"
                " JOIN systems s2 ON s2.id = i.second_system JOIN systems sl ON sl.id = r.left_system"
                " ORDER BY r.id").fetchall()
        out = []
        for row in rows:
            d = dict(row)
            d["shared"] = bool(d["shared"])
            d["winner"] = winner_of(d)
            out.append(d)
        return out


def winner_of(row: dict) -> Optional[str]:
    """The system a rating row chose, or None for a tie or 'both bad'."""
    if row["choice"] == "left":
        return row["left_system"]
    if row["choice"] == "right":
        return row["second_system"] if row["left_system"] == row["first_system"] else row["first_system"]
    return None
