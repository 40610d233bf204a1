"""Exact match on chain-of-thought answers: the final answer after a marker ("#### 42", GSM8K's form).

A chain-of-thought response is a rationale, then a line "<marker> <answer>". `final_answer` takes
what follows the LAST marker, up to the end of that line (and before an end-of-turn token when a
chat model's output still holds it), and normalises it as the harness compares GSM8K answers:
numbers without commas, "$" or a trailing ".", 18.0 == 18 (`tasks.normalize_number`); text lower-
cased without punctuation or articles (`tasks.normalize_text`). A response without the marker has
no answer and never matches: the model has to write the answer in the form it was taught.
"""

from __future__ import annotations

from typing import Optional, Sequence

from jaxlm.data.chat import ANSWER_MARKER, END_OF_TURN
from jaxlm.eval.tasks import normalize_number, normalize_text


def final_answer(text: str, marker: str = ANSWER_MARKER, *, numeric: bool = True,
                 end_of_turn: str = END_OF_TURN) -> Optional[str]:
    """The normalised answer after the last `marker` in `text`, or None when there is none."""
    if marker not in text:
        return None
    answer = text.rsplit(marker, 1)[1].split(end_of_turn, 1)[0].strip().split("\n", 1)[0].strip()
    if not answer:
        return None
    return normalize_number(answer) if numeric else normalize_text(answer)


def exact_match(responses: Sequence[str], golds: Sequence[str], marker: str = ANSWER_MARKER, *,
                numeric: bool = True) -> dict:
    """{"exact_match": share of responses whose final answer equals the gold one, "answered": share
    with a final answer at all, "n"}. A gold is a full reference solution (it holds the marker) or
    the bare answer."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    if not responses:
        raise ValueError("no responses to score")
    hits = answered = 0
    for response, gold in zip(responses, golds):
        got = final_answer(response, marker, numeric=numeric)
        want = final_answer(gold, marker, numeric=numeric) if marker in gold else (
            normalize_number(gold) if numeric else normalize_text(gold))
        answered += got is not None
        hits += got is not None and got == want
    return {"exact_match": hits / len(responses), "answered": answered / len(responses), "n": len(responses)}
