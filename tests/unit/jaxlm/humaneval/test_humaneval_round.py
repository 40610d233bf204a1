"""A rating round without a browser: items and pair balance, who sees what next (shared items,
never twice, holds, caps), the SQLite store, prompt and response files, setting up and resuming a
round, the tally/export commands, and a live server over HTTP."""

import collections
import json
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from jaxlm.humaneval.__main__ import main
from jaxlm.humaneval.assign import build_items, next_item, remaining
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.export import to_csv
from jaxlm.humaneval.inputs import read_prompts, read_responses
from jaxlm.humaneval.setup_round import open_round, parse_sources
from jaxlm.humaneval.store import Store
from tests.helpers import Server, free_port, get


def write_responses(path, systems, n_prompts, samples=1, text=lambda s, k, j: f"{s} says {k}.{j}"):
    with open(path, "w") as f:
        for k in range(n_prompts):
            for s in systems:
                for j in range(samples):
                    f.write(json.dumps({"system": s, "prompt": f"prompt {k}", "response": text(s, k, j)}) + "\n")
    return str(path)


def make_round(tmp_path, systems=("x", "y"), n_prompts=6, overlap=2 / 6, samples=1, seed=0):
    store = Store(str(tmp_path / "round.db"))
    sources = parse_sources(None, None, [], [write_responses(tmp_path / "r.jsonl", systems, n_prompts, samples)])
    assert open_round(store, sources, None, samples, overlap, seed, {}) is True
    return store


def rate_all(store, rater, seed=0, per_rater=None, choice="left"):
    seen = []
    while (item := next_item(store, rater.id, seed, per_rater)) is not None:
        assert next_item(store, rater.id, seed, per_rater) == item  # a reload shows the same item
        assert store.add_rating(rater.id, item, choice, "")
        seen.append(item)
    return seen


def test_items_balance_pairs_and_share():
    items = build_items(10, 2, 3, 0.25, seed=1)
    assert len(items) == 20 and len({(it.prompt, it.sample) for it in items}) == 20
    per_pair = collections.Counter((it.first, it.second) for it in items)
    assert sorted(per_pair) == [(0, 1), (0, 2), (1, 2)] and max(per_pair.values()) - min(per_pair.values()) <= 1
    shared = [it for it in items if it.shared]
    assert len(shared) == 5 and len({(it.first, it.second) for it in shared}) == 3  # spread over the pairs
    assert all(it.first < it.second for it in items)
    assert build_items(10, 2, 3, 0.25, seed=1) == items  # seeded


def test_shared_items_go_to_everyone_the_rest_to_one(tmp_path):
    store = make_round(tmp_path)
    ana, ben = store.add_rater("ana"), store.add_rater("ben")
    assert store.add_rater("ana") == ana  # the same name resumes the same rater
    first = next_item(store, ana.id, 0)
    assert store.item_view(ana.id, first)["prompt"].startswith("prompt ")
    got_ana = [first] + rate_all(store, ana)[1:]
    assert len(got_ana) == 6 and len(set(got_ana)) == 6
    got_ben = rate_all(store, ben)
    shared = {c.id for c in store.open_items(-1, 0) if c.shared}
    assert len(shared) == 2 and set(got_ben) == shared  # ben gets only what is shared
    assert set(got_ana[:2]) == shared  # shared items come first
    assert store.counts() == dict(prompts=6, items=6, shared=2, rated_items=6, ratings=8, raters=2, skips=0)
    assert remaining(store, ana.id) == 0 and next_item(store, ana.id, 0) is None


def test_held_items_caps_and_left_right(tmp_path):
    store = make_round(tmp_path, n_prompts=4, overlap=0.0)
    ana, ben = store.add_rater("ana"), store.add_rater("ben")
    held = next_item(store, ana.id, 0)  # shown, not rated: held for ana
    assert held not in rate_all(store, ben)
    assert remaining(store, ana.id) == 1
    assert store.add_rating(ana.id, held, "tie", "fine") and not store.add_rating(ana.id, held, "left", "")
    with pytest.raises(HumanEvalError, match="never shown"):
        store.add_rating(ana.id, 1 + max(i for i, *_ in store.open_items(-1, 0)), "left", "")
    with pytest.raises(HumanEvalError, match="choice"):
        store.add_rating(ana.id, held, "maybe", "")

    (tmp_path / "capped").mkdir()
    capped = make_round(tmp_path / "capped", n_prompts=6, overlap=1.0)
    cat = capped.add_rater("cat")
    assert len(rate_all(capped, cat, per_rater=4)) == 4 and remaining(capped, cat.id, 4) == 0
    # left/right is drawn per rater and item, about half each way, and recorded with the rating
    rows = capped.ratings()
    assert {r["left_system"] for r in rows} == {"x", "y"}
    assert all(r["winner"] == r["left_system"] for r in rows)


def test_skipped_items_are_not_ratings_and_go_back_to_the_others(tmp_path):
    store = make_round(tmp_path, n_prompts=4, overlap=0.25)  # one shared item, three unshared
    ana, ben = store.add_rater("ana"), store.add_rater("ben")
    shared = next_item(store, ana.id, 0)
    assert store.skip(ana.id, shared) and not store.skip(ana.id, shared)
    assert not store.add_rating(ana.id, shared, "left", "")  # a late second key press changes nothing
    unshared = next_item(store, ana.id, 0)
    assert unshared != shared and store.skip(ana.id, unshared)
    got_ana = rate_all(store, ana)
    assert shared not in got_ana and unshared not in got_ana and len(got_ana) == 2
    assert set(rate_all(store, ben)) == {shared, unshared}  # the shared one, and the one ana passed on
    assert store.counts()["skips"] == 2 and store.counts()["ratings"] == 4
    assert {r["rater"] for r in store.ratings() if r["item"] == unshared} == {"ben"}
    with pytest.raises(HumanEvalError, match="never shown"):
        store.skip(ben.id, 999)


def test_raters_arriving_at_once_get_different_items(tmp_path):
    store = make_round(tmp_path, n_prompts=8, overlap=0.0)
    raters = [store.add_rater(f"r{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # as the server's worker threads do
        got = list(pool.map(lambda r: next_item(store, r.id, 0), raters))
    assert sorted(got) == sorted(c.id for c in store.open_items(-1, 0))  # each unshared item to one rater


def test_three_systems_stay_balanced_while_rating(tmp_path):
    store = make_round(tmp_path, systems=("a", "b", "c"), n_prompts=12, overlap=0.0)
    rater = store.add_rater("r")
    while (item := next_item(store, rater.id, 0)) is not None:
        store.add_rating(rater.id, item, "right", "")
        loads = store.pair_loads()
        assert max(loads.values()) - min([*loads.values(), 0] if len(loads) < 3 else loads.values()) <= 1


def test_store_refuses_what_is_not_a_round(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HumanEvalError, match="new --db"):
        Store(str(junk))
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(HumanEvalError, match="something else"):
        Store(str(tmp_path / "other.db"))
    with pytest.raises(HumanEvalError, match="does not exist"):
        Store(str(tmp_path / "missing" / "r.db"))


def test_prompt_and_response_files(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert [p.text for p in read_prompts(str(tmp_path / "p.txt"))] == ["first prompt", "second prompt"]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "plain"}) + "\n" + json.dumps(chat) + "\n")
    plain, turns = read_prompts(str(tmp_path / "p.jsonl"))
    assert plain.messages is None and turns.text == "system: Be brief.\n\nuser: Hi?" and len(turns.messages) == 2
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(HumanEvalError, match=r"bad.jsonl:2: no prompt"):
        read_prompts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "dup.txt").write_text("same\nsame\n")
    with pytest.raises(HumanEvalError, match="--samples"):
        read_prompts(str(tmp_path / "dup.txt"))
    # Self-Instruct's prediction rows: prompt and response, no system: the file names the system
    (tmp_path / "davinci.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "target": "t"}) + "\n")
    by_system, prompts = read_responses(str(tmp_path / "davinci.jsonl"))
    assert by_system == {"davinci": {"p": ["r"]}} and prompts[0].text == "p"


def test_setup_checks_everything_before_compute(tmp_path):
    full = write_responses(tmp_path / "full.jsonl", ["ref"], 3)
    (tmp_path / "short.jsonl").write_text(json.dumps({"prompt": "prompt 0", "response": "only one"}) + "\n")
    (tmp_path / "prompts.txt").write_text("prompt 0\nprompt 1\nprompt 2\n")
    store = Store(str(tmp_path / "r.db"))
    sources = parse_sources(full, str(tmp_path / "short.jsonl"), [], [])
    with pytest.raises(HumanEvalError, match=r"'short' .* lacks 1 response\(s\) for 2 of 3 prompts"):
        open_round(store, sources, str(tmp_path / "prompts.txt"), 1, 0.2, 0, {})
    with pytest.raises(HumanEvalError, match="two systems are called 'full'"):
        open_round(store, parse_sources(full, full, [], []), None, 1, 0.2, 0, {})
    with pytest.raises(HumanEvalError, match="NAME=PATH"):
        parse_sources(None, None, ["nameless"], [])
    with pytest.raises(HumanEvalError, match="neither a training workdir"):
        parse_sources(str(tmp_path), None, [], [])
    with pytest.raises(HumanEvalError, match="at least two systems"):
        open_round(store, parse_sources(full, None, [], []), None, 1, 0.2, 0, {})
    with pytest.raises(HumanEvalError, match="several systems"):
        two = write_responses(tmp_path / "two.jsonl", ["a", "b"], 3)
        open_round(store, parse_sources(two, full, [], []), None, 1, 0.2, 0, {})
    assert not store.has_round()  # nothing was written by the failures
    other = parse_sources(None, None, [f"mine={full}", f"theirs={write_responses(tmp_path / 't.jsonl', ['t'], 3)}"], [])
    assert open_round(store, other, None, 1, 0.2, 0, {}) is True
    assert store.systems() == ["mine", "theirs"]
    assert open_round(store, other, None, 1, 0.2, 0, {}) is False  # the same setup resumes
    with pytest.raises(HumanEvalError, match="another setup"):
        open_round(store, other, None, 1, 0.5, 0, {})


def test_tally_and_export_commands(tmp_path, capsys):
    store = make_round(tmp_path, n_prompts=4, overlap=1.0)
    for name, choice in (("ana", "left"), ("ben", "tie")):
        rater = store.add_rater(name)
        rate_all(store, rater, choice=choice)
    db = str(tmp_path / "round.db")
    assert main(["tally", db]) == 0
    out = capsys.readouterr().out
    assert "8 ratings; a tie or 'both bad' counts half" in out and "Fleiss' kappa  2 raters" in out
    assert main(["tally", db, "--json", "--ties", "drop"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(s["wins"] for s in report["systems"]) == 4 and report["tie_rule"].startswith("ties and")
    assert main(["export", db, "--out", str(tmp_path / "r.csv")]) == 0
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("rating,rated_at,rater,item") and len(lines) == 9
    assert main(["export", db, "--out", str(tmp_path / "r.txt")]) == 2
    assert "must end in .csv or .json" in capsys.readouterr().err
    assert main(["tally", str(tmp_path / "none.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path / "r.db"), "--instructions", str(tmp_path / "none.txt"),
                 "--port", str(free_port())]) == 2
    assert "instructions file" in capsys.readouterr().err


def test_csv_keeps_formulas_as_text():
    row = dict(rating=1, rated_at=0.0, rater="=cmd|' /C calc'!A0", item=1, prompt_id=0, sample=0, shared=False,
               prompt="+1", first_system="a", second_system="b", left_system="a", choice="left", winner="a",
               comment="@SUM(1)", seconds=1.0, first_response="-2", second_response="plain")
    text = to_csv([row])
    assert "'=cmd" in text and ",'+1," in text and "'@SUM(1)" in text and ",'-2," in text and ",plain" in text


def test_serve_fails_clearly_before_serving(tmp_path, capsys):
    assert main(["serve", "--db", str(tmp_path / "new.db"), "--port", str(free_port())]) == 2
    assert "holds no round" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path / "new.db"), "--port", "0"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--responses", write_responses(tmp_path / "r.jsonl", "xy", 2),
                     "--db", str(tmp_path / "r.db"), "--port", str(port)]) == 2
    assert "pick another --port" in capsys.readouterr().err
    assert main(["serve", "--a", str(tmp_path / "nope"), "--b", str(tmp_path / "r.jsonl"),
                 "--db", str(tmp_path / "r.db"), "--port", str(free_port())]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--db", str(tmp_path / "r.db"), "--instructions", str(tmp_path / "none.txt"),
                 "--port", str(free_port())]) == 2
    assert "instructions file" in capsys.readouterr().err


def test_chat_prompts_join_and_exports_over_http(tmp_path):
    """A live server (no browser): joining by form, a chat prompt's turns, a forged form, the exports."""
    chat = [{"role": "system", "content": "Answer <briefly>."}, {"role": "user", "content": "2+2?"}]
    with open(tmp_path / "r.jsonl", "w") as f:
        for system, answer in (("x", "4"), ("y", "=1+3")):
            f.write(json.dumps({"system": system, "messages": chat, "response": answer}) + "\n")
    server = Server(["--responses", str(tmp_path / "r.jsonl"), "--db", str(tmp_path / "r.db")], free_port(),
                    tmp_path / "log")
    try:
        form = urllib.parse.urlencode({"name": "<i>dana</i>"}).encode()
        with urllib.request.urlopen(server.links["raters join at"], data=form, timeout=10) as r:
            rater_url, page = r.url, r.read().decode()
        assert "/r/" in rater_url and "&lt;i&gt;dana&lt;/i&gt;" in page and "<i>dana" not in page
        assert '<span class="role">system</span><div class="text">Answer &lt;briefly&gt;.</div>' in page
        assert '<span class="role">user</span><div class="text">2+2?</div>' in page
        forged = urllib.parse.urlencode({"item": "999", "choice": "left"}).encode()
        try:
            urllib.request.urlopen(rater_url + "/rate", data=forged, timeout=10)
            raise AssertionError("a rating of an item never shown was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
        item = page.split('name="item" value="')[1].split('"')[0]
        skip = urllib.parse.urlencode({"item": item, "choice": "skip"}).encode()
        with urllib.request.urlopen(rater_url + "/rate", data=skip, timeout=10) as r:
            assert "You rated 0 items." in " ".join(r.read().decode().split())  # the only item, passed on
        with sqlite3.connect(tmp_path / "r.db") as con:  # bring it back to rate it after all
            con.execute("UPDATE assignments SET skipped_at = NULL")
        good = urllib.parse.urlencode({"item": item, "choice": "right", "comment": "ok"}).encode()
        with urllib.request.urlopen(rater_url + "/rate", data=good, timeout=10) as r:
            assert "You rated 1 item." in " ".join(r.read().decode().split())
        status, text = get(server.links["results (keep private)"] + "/ratings.csv")
        assert status == 200 and text.splitlines()[0].startswith("rating,rated_at,rater")
        assert text.rstrip().endswith(",'=1+3")  # a formula-looking response stays text in a spreadsheet
        status, text = get(server.links["results (keep private)"] + "/ratings.json")
        assert status == 200 and json.loads(text)[0]["second_response"] == "=1+3"
        assert get(server.links["raters join at"].replace("/join/", "/results/") + "/ratings.csv")[0] == 404
    finally:
        server.stop()
