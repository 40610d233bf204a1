"""The lm-evaluation-harness adapter on a tiny local task, offline: lm-eval's accuracy equals
jaxlm's harness on the same items, and its three request types return jaxlm's numbers."""

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is a local file; never look online
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from jaxlm.eval import harness  # noqa: E402
from jaxlm.eval import tasks as T  # noqa: E402
from jaxlm.eval.loading import from_params  # noqa: E402
from jaxlm.eval.lm_eval_adapter import JaxlmLM  # noqa: E402
from jaxlm.eval.scoring import Scorer  # noqa: E402
from tests.helpers import CORPUS, make_tokenizer_dir, random_model  # noqa: E402

ITEMS = [
    {"query": "The quick brown fox", "choices": ["jumps over the lazy dog.", "sits on a roof."], "gold": 0},
    {"query": "A man is sitting on a roof. He", "choices": ["bends down.", "makes $18 a day.", "returns n."], "gold": 1},
    {"query": "def fib(n):", "choices": ["return n", "the dog"], "gold": 0},
    {"query": "Janet sells 9 duck eggs a day, so", "choices": ["she makes $18.", "the fox jumps."], "gold": 0},
]


class Req:  # what lm-eval hands a model: an object with .args
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    tok_dir = make_tokenizer_dir(str(tmp_path_factory.mktemp("lmeval") / "data"))
    config, params = random_model("llama", vocab_size=360, dataset=tok_dir, seed=4)
    return from_params(config, params)


@pytest.mark.slow
def test_simple_evaluate_matches_the_harness(em, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    task = {"task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{query}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    from lm_eval.tasks import TaskManager
    out = lm_eval.simple_evaluate(model=JaxlmLM(model=em), tasks=[task], task_manager=TaskManager(),
                                  bootstrap_iters=0, log_samples=False)
    theirs = out["results"]["tiny_mc"]
    ours = harness.evaluate_task(em, T.Task(name="mc", kind="multiple_choice", format="mosaic_mc", path="x",
                                            prompt="{context}", target=" {choice}"), data_file=str(data))
    assert theirs["acc,none"] == pytest.approx(ours["metrics"]["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["metrics"]["acc_norm"])


def test_request_types(em):
    lm = JaxlmLM(model=em)
    scorer = Scorer(em.graphdef, em.params, em.window)
    (ll, greedy), = lm.loglikelihood([Req("The quick brown", " fox")])
    (expected,) = scorer.score([harness.encode_pair(em.tokenizer, "The quick brown", " fox")])
    assert ll == pytest.approx(expected.logprob) and greedy == expected.greedy
    text = CORPUS[:300]
    (rolling,) = lm.loglikelihood_rolling([Req(text)])
    total, count = scorer.rolling([em.tokenizer.eos_id] + em.tokenizer.encode(text), em.window)
    assert rolling == pytest.approx(total) and count == len(em.tokenizer.encode(text))
    outs = lm.generate_until([Req("def fib", {"until": ["\n"], "max_gen_toks": 8}),
                              Req("The quick", {"until": "zzz", "max_gen_toks": 8})])
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs) and "\n" not in outs[0]
