"""The shipped verifiable task: seeded, disjoint splits, worked answers that are right, and the
verifier that checks a response's final number."""

import json

import pytest

from data_prep import arithmetic
from jaxlm.eval.errors import EvalError
from jaxlm.eval.verifiers import final_number, load_verifier


def evaluate(working: str) -> int:
    """Re-do the worked answer's arithmetic line by line."""
    total = None
    for line in working.splitlines()[:-1]:
        lhs, rhs = line.split(" = ")
        a, op, b = lhs.split(" ")
        a, b = int(a), int(b)
        assert total is None or a == total  # each step starts from the last result
        total = {"+": a + b, "-": a - b, "x": a * b}[op]
        assert int(rhs) == total
    return total


def test_problems_are_seeded_disjoint_and_correct(tmp_path):
    train, test = arithmetic.make_splits(300, 50, seed=3)
    assert (train, test) == arithmetic.make_splits(300, 50, seed=3)
    assert not {p["instruction"] for p in train} & {p["instruction"] for p in test}
    for p in train + test:
        assert evaluate(p["output"]) == int(p["answer"]) >= 0
        assert p["output"].endswith(f"#### {p['answer']}")
        assert final_number(p["output"], p["answer"]) == 1.0
    assert arithmetic.main(["--out", str(tmp_path), "--train", "5", "--test", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"instruction", "input", "output", "answer"}


def test_verifier():
    assert final_number("12 + 3 = 15\n#### 15", "15") == 1.0
    assert final_number("#### 15.0", "15") == 1.0
    assert final_number("#### 14", "15") == 0.0
    assert final_number("", "15") == 0.0
    assert final_number("so the answer is 15", "15") == 0.0  # no "####": not in the taught form
    assert final_number("#### 1,234", "1234") == 1.0
    assert load_verifier("jaxlm.eval.verifiers:final_number") is final_number
    for bad in ("final_number", "jaxlm.eval.verifiers:nope", "no.such.module:f"):
        with pytest.raises(EvalError):
            load_verifier(bad)
