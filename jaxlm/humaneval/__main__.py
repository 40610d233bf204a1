"""Blind side-by-side human evaluation: a small web app where raters compare two systems' responses
to the same prompt, and the tally of their ratings.

  python -m jaxlm.humaneval serve --a W1 --b W2 --prompts FILE [--samples N] [--db round.db] [--port P]
  python -m jaxlm.humaneval serve --responses FILE [--db round.db]      (precomputed responses)
  python -m jaxlm.humaneval serve --db round.db                          (resume a round)
  python -m jaxlm.humaneval tally round.db [--ties half|drop] [--json]
  python -m jaxlm.humaneval export round.db --out ratings.csv|ratings.json

Systems are jaxlm workdirs, transformers folders or responses files (JSON lines with prompt and
response); `--system NAME=PATH` adds more, and `--responses FILE` brings every system a file names.
Models generate their responses once, up front. The server binds 127.0.0.1 unless --host says
otherwise and prints the links: the invite link for raters, and the private results link.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import uvicorn

from jaxlm.humaneval import export
from jaxlm.humaneval.app import make_app
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.report import format_text, from_rows, summarize
from jaxlm.humaneval.setup_round import open_round, parse_sources
from jaxlm.humaneval.store import Store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxlm.humaneval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="set up or resume a round and serve the rating pages")
    s.add_argument("--a", help="first system: workdir, transformers folder or responses file")
    s.add_argument("--b", help="second system: workdir, transformers folder or responses file")
    s.add_argument("--system", action="append", default=[], metavar="NAME=PATH", help="a further system (repeatable)")
    s.add_argument("--responses", action="append", default=[], metavar="FILE",
                   help="JSON lines with system, prompt, response: every system it names (repeatable)")
    s.add_argument("--prompts", help="prompts: text lines, or JSON lines with prompt or messages "
                                     "(default: the prompts of the first responses file)")
    s.add_argument("--samples", type=int, default=1, help="responses per prompt and system (default 1)")
    s.add_argument("--db", default="humaneval.db", help="the round's SQLite file (default humaneval.db)")
    s.add_argument("--overlap", type=float, default=0.2,
                   help="share of items every rater rates, for agreement (default 0.2)")
    s.add_argument("--per-rater", type=int, help="at most this many items per rater")
    s.add_argument("--rater", action="append", default=[], metavar="NAME", help="make a rater and print their link")
    s.add_argument("--instructions", metavar="FILE", help="text file of instructions shown to raters")
    s.add_argument("--seed", type=int, default=0, help="seed of item order, pairs, left/right draws and sampling")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--url", help="base URL for the printed links (default http://HOST:PORT)")
    g = s.add_argument_group("generation (model systems)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--batch-size", type=int, default=8)

    t = sub.add_parser("tally", help="print win rates, intervals, Bradley-Terry ratings and agreement")
    t.add_argument("db")
    t.add_argument("--ties", choices=["half", "drop"], default="half",
                   help="half: a tie or 'both bad' is half a win each (default); drop: leave them out")
    t.add_argument("--json", action="store_true", help="print JSON instead of tables")

    e = sub.add_parser("export", help="write every rating as CSV or JSON")
    e.add_argument("db")
    e.add_argument("--out", required=True, help="ratings.csv or ratings.json")
    return p


def _existing_store(path: str):
    if not os.path.isfile(path):
        raise HumanEvalError(f"database {path!r} does not exist; `serve` creates one")
    store = Store(path)
    if not store.has_round():
        raise HumanEvalError(f"{path!r} holds no round yet; set one up with `serve`")
    return store


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise HumanEvalError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None


def serve(args) -> int:
    if not 0 < args.port < 65536:
        raise HumanEvalError(f"--port must be between 1 and 65535, got {args.port}")
    if args.per_rater is not None and args.per_rater < 1:
        raise HumanEvalError(f"--per-rater must be at least 1, got {args.per_rater}")
    instructions = ""
    if args.instructions:
        if not os.path.isfile(args.instructions):
            raise HumanEvalError(f"instructions file {args.instructions!r} does not exist")
        with open(args.instructions, encoding="utf-8") as f:
            instructions = f.read()
    _check_port(args.host, args.port)
    store = Store(args.db)
    sources = parse_sources(args.a, args.b, args.system, args.responses)
    if sources:
        sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, stop=list(args.stop), seed=args.seed)
        created = open_round(store, sources, args.prompts, args.samples, args.overlap, args.seed, sampling,
                             args.batch_size)
    elif store.has_round():
        created = False
    else:
        raise HumanEvalError(f"{args.db!r} holds no round; give the systems (--a and --b, --system or --responses) "
                             "and --prompts")
    for name in args.rater:
        store.add_rater(name)
    settings, counts = store.settings(), store.counts()
    base = (args.url or f"http://{args.host if args.host not in ('0.0.0.0', '::') else socket.gethostname()}"
                        f":{args.port}").rstrip("/")
    print(f"{'new' if created else 'resumed'} round in {args.db}: {len(store.systems())} systems, {counts['prompts']} "
          f"prompts x {settings['samples']} sample(s), {counts['items']} items ({counts['shared']} shared), "
          f"{counts['ratings']} ratings so far")
    print(f"raters join at: {base}/join/{settings['invite']}")
    print(f"results (keep private): {base}/results/{settings['admin']}")
    for rater in store.raters():
        print(f"rater {rater.name}: {base}/r/{rater.token}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: anyone who can reach this machine and holds a link can use it",
              file=sys.stderr)
    sys.stdout.flush()
    uvicorn.run(make_app(store, args.per_rater, instructions), host=args.host, port=args.port, log_level="warning")
    return 0


def tally(args) -> int:
    store = _existing_store(args.db)
    report = summarize(store.systems(), from_rows(store.ratings()), args.ties)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_text(report))
    return 0


def export_ratings(args) -> int:
    store = _existing_store(args.db)
    if not args.out.endswith((".csv", ".json")):
        raise HumanEvalError(f"--out must end in .csv or .json, got {args.out!r}")
    rows = store.ratings()
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(export.to_csv(rows) if args.out.endswith(".csv") else export.to_json(rows))
    except OSError as e:
        raise HumanEvalError(f"cannot write {args.out!r} ({e.strerror})") from None
    print(f"wrote {len(rows)} ratings to {args.out}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"serve": serve, "tally": tally, "export": export_ratings}[args.command](args)
    except HumanEvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
