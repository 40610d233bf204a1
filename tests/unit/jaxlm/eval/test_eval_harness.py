"""The n-shot harness: loaders, prompts and demonstrations, scores equal to a direct computation with
the exported model in `transformers`, metrics, contamination, the trainer hook and bad input."""

import bz2
import json
import math

import numpy as np
import pytest

from jaxlm.eval import harness, run_tasks, scalars
from jaxlm.eval import tasks as T
from jaxlm.eval.contamination import NgramIndex
from jaxlm.eval.errors import EvalError
from jaxlm.eval.loading import from_params
from jaxlm.export import export_run
from tests.helpers import make_tokenizer_dir, random_model

MC = [
    {"query": "Question: Which statement best explains why photosynthesis matters?", "choices": ["Sunlight is the source of energy.", "Most ecosystems are on land.", "The fox jumps."], "gold": 0},
    {"query": "A man is sitting on a roof. He", "choices": ["bends down and grabs the pole.", "lifts the weight over his head."], "gold": 1},
    {"query": "Janet sells 16 - 3 - 4 = 9 duck eggs a day, so", "choices": ["she makes $18.", "the quick brown fox jumps."], "gold": 0},
    {"query": "def fib(n):", "choices": ["    return n", "Answer: lazy dog"], "gold": 0},
]
SCHEMA = [
    {"context_options": ["The fox jumps over the dog because the fox", "The fox jumps over the dog because the dog"], "continuation": "is lazy.", "gold": 1},
    {"context_options": ["Janet sells eggs to Sam because Janet", "Janet sells eggs to Sam because Sam"], "continuation": "has ducks.", "gold": 0},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random llama model with a real SentencePiece tokenizer, and its transformers export."""
    root = tmp_path_factory.mktemp("harness")
    tok_dir = make_tokenizer_dir(str(root / "data"))
    config, params = random_model("llama", vocab_size=384, dataset=tok_dir, seed=1)
    em = from_params(config, params)
    files = dict(mc=write_jsonl(root / "mc.jsonl", MC), schema=write_jsonl(root / "schema.jsonl", SCHEMA))
    return dict(root=root, config=config, params=params, em=em, files=files)


def mc_task(**kw):
    return T.Task(name="mc", kind="multiple_choice", format="mosaic_mc", path="unused",
                  prompt="{context}", target=" {choice}", **kw)


def test_loglikelihoods_equal_transformers_on_the_export(setup, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    export_run(setup["config"], setup["params"], str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    result = harness.evaluate_task(setup["em"], mc_task(), data_file=setup["files"]["mc"], log_samples=True)
    for item, sample in zip(MC, result["samples"]):
        for choice, ll in zip(item["choices"], sample["loglikelihoods"]):
            ctx = hf_tok(item["query"], add_special_tokens=False)["input_ids"]
            whole = hf_tok(item["query"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(hf(torch.tensor([whole])).logits[0], -1).numpy()
            direct = sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole)))
            assert ll == pytest.approx(float(direct), abs=2e-4)


def test_multiple_choice_metrics_follow_the_loglikelihoods(setup):
    result = harness.evaluate_task(setup["em"], mc_task(), data_file=setup["files"]["mc"], log_samples=True)
    samples = result["samples"]
    acc = np.mean([int(np.argmax(s["loglikelihoods"])) == s["gold"] for s in samples])
    assert result["metrics"]["acc"] == pytest.approx(acc)
    lengths = [[len(" " + c) for c in item["choices"]] for item in MC]
    norm = np.mean([int(np.argmax(np.array(s["loglikelihoods"]) / n)) == s["gold"] for s, n in zip(samples, lengths)])
    assert result["metrics"]["acc_norm"] == pytest.approx(norm)
    assert result["random_baseline"] == pytest.approx(np.mean([1 / 3, 1 / 2, 1 / 2, 1 / 2]))
    assert result["items"] == 4 and result["truncated"] == 0


def test_schema_scores_the_continuation_after_each_context(setup):
    task = T.Task(name="wino", kind="schema", format="mosaic_schema", path="unused", prompt="{option}",
                  target=" {continuation}")
    result = harness.evaluate_task(setup["em"], task, data_file=setup["files"]["schema"], log_samples=True)
    scorer = harness.Scorer(setup["em"].graphdef, setup["params"], 64)
    tok = setup["em"].tokenizer
    for item, sample in zip(SCHEMA, result["samples"]):
        direct = [s.logprob for s in scorer.score([harness.encode_pair(tok, c, " " + item["continuation"])
                                                   for c in item["context_options"]])]
        np.testing.assert_allclose(sample["loglikelihoods"], direct, rtol=1e-6)
    assert result["random_baseline"] == 0.5


def test_demonstrations_are_seeded_and_exclude_the_item():
    task = mc_task()
    items = [dict(id=f"f:{i}", context=f"q{i}", choices=["a", "b"], gold=i % 2) for i in range(6)]
    for i in range(6):
        text = harness._demos(task, items, True, i, 3, seed=7)
        assert text.count("\n\n") == 3 and f"q{i} " not in text
        assert text == harness._demos(task, items, True, i, 3, seed=7)
    assert harness._demos(task, items, True, 0, 3, seed=7) != harness._demos(task, items, True, 0, 3, seed=8)
    assert "q1 b\n\n" in harness._demos(task, items[:2], True, 0, 1, seed=0)  # demo = prompt + gold answer
    with pytest.raises(EvalError, match="only 5 other items"):
        harness._demos(task, items, True, 0, 6, seed=0)


def test_few_shot_prompts_are_truncated_on_the_left(setup):
    result = harness.evaluate_task(setup["em"], mc_task(), data_file=setup["files"]["mc"], shots=3, log_samples=True)
    assert result["shots"] == 3 and result["truncated"] > 0  # 3 demonstrations do not fit in 64 tokens
    assert result["fewshot_source"].startswith("same file")


def test_contamination_flags_items_seen_in_training(setup):
    train_text = ["noise " * 20, "Question: Which statement best explains why photosynthesis matters? Sunlight is the source of energy. more"]
    index = NgramIndex.from_texts(train_text)
    result = harness.evaluate_task(setup["em"], mc_task(), data_file=setup["files"]["mc"], contamination=index,
                                   log_samples=True)
    assert [s["contaminated"] for s in result["samples"]] == [True, False, False, False]
    assert result["contaminated"] == 1 and result["clean_items"] == 3
    clean = [s["acc"] for s in result["samples"][1:]]
    assert result["metrics_clean"]["acc"] == pytest.approx(np.mean(clean))
    assert "clean" in harness.format_table(dict(tasks={"mc": result}, average=harness._average({"mc": result})))


def test_generation_task_exact_match(setup, tmp_path):
    items = [{"question": "Janet sells 16 - 3 - 4 eggs.", "answer": "She sells 9.\n#### 9"},
             {"question": "What is 2 * 9?", "answer": "It is 18.\n#### 1,8"}]
    path = write_jsonl(tmp_path / "gsm.jsonl", items)
    task = T.load_task("gsm8k")
    result = harness.evaluate_task(setup["em"], task, data_file=path, shots=1, log_samples=True)
    assert result["max_new_tokens"] == 32  # capped at half the 64-token context
    for s in result["samples"]:
        assert s["exact_match"] == float(s["extracted"] is not None and s["extracted"] in s["targets"])
    assert result["samples"][1]["targets"] == ["18"]
    assert T.extract_answer("so #### 1,234.", task.extract, True) == "1234"
    assert T.last_number("it is 7 then 12.50 dollars") == "12.5"


def test_run_tasks_hook_and_scalars(setup, tmp_path):
    spec = str(_spec_file(tmp_path, setup["files"]["mc"]))
    result = run_tasks(setup["params"], setup["config"], [spec], limit=3)
    fn = harness.Scorer(setup["em"].graphdef, setup["params"], 64)._token_logprobs
    compiled_shapes = fn._cache_size()
    again = run_tasks(setup["params"], setup["config"], [spec], limit=3)  # as the trainer does every N steps
    assert fn._cache_size() == compiled_shapes  # nothing recompiled
    assert again["tasks"]["mine"]["metrics"] == result["tasks"]["mine"]["metrics"]
    assert result["tasks"]["mine"]["items"] == 3
    flat = scalars(result)
    assert set(flat) == {"eval/mine/acc", "eval/mine/acc_norm", "eval/average/score",
                         "eval/average/random_baseline", "eval/average/above_chance"}
    avg = result["average"]
    assert avg["above_chance"] == pytest.approx((avg["score"] - avg["random_baseline"]) / (1 - avg["random_baseline"]))


def _spec_file(tmp_path, data):
    path = tmp_path / "mine.yaml"
    path.write_text(f"name: mine\nformat: mosaic_mc\npath: {data}\nprompt: '{{context}}'\ntarget: ' {{choice}}'\n")
    return path


def test_loaders_read_each_format(tmp_path):
    hs = {"activity_label": "Roof shingle removal", "ctx": "A man is on a roof. he", "endings": ["a [title] b", "c", "d", "e"], "label": 2}
    items = T.load_hellaswag_jsonl(write_jsonl(tmp_path / "hs.jsonl", [hs]))
    assert items[0]["context"] == "Roof shingle removal: A man is on a roof. he" and items[0]["gold"] == 2
    assert items[0]["choices"][0] == "a. b"
    txt = tmp_path / "hs.txt.bz2"
    txt.write_bytes(bz2.compress("Roof: A man. he\n3\na\nb\nc\nd\nClean: B. she\n0\ne\nf\ng\nh\n".encode()))
    items = T.load_items(T.load_task("hellaswag"), str(txt))
    assert [i["gold"] for i in items] == [3, 0] and items[1]["choices"] == ["e", "f", "g", "h"]
    assert items[1]["id"].endswith(":7")
    lm = T.load_mosaic_lm(write_jsonl(tmp_path / "l.jsonl", [{"context": "a b", "continuation": "c"}]))
    assert lm[0]["continuation"] == "c"
    qa = T.load_mosaic_qa(write_jsonl(tmp_path / "q.jsonl", [{"context": "Q?", "answer": "X", "aliases": ["X", "Y"]}]))
    assert qa[0]["targets"] == ["X", "Y"]


def test_malformed_task_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MC[0]) + "\n" + '{"query": "x", "choices": ["a"], "gold": 1}\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:2: gold=1 is not an index into the 1 choices"):
        T.load_mosaic_mc(str(bad))
    bad.write_text(json.dumps(MC[0]) + "\n\n{not json\n")
    with pytest.raises(EvalError, match=r"bad.jsonl:3: not valid JSON"):
        T.load_mosaic_mc(str(bad))
    bad.write_text(json.dumps({"query": "x", "gold": 0}) + "\n")
    with pytest.raises(EvalError, match=r"bad.jsonl:1: missing field 'choices'"):
        T.load_mosaic_mc(str(bad))
    txt = tmp_path / "hs.txt"
    txt.write_text("ctx\n7\na\nb\nc\nd\n")
    with pytest.raises(EvalError, match=r"hs.txt:2: expected the gold ending index 0-3, got '7'"):
        T.load_hellaswag_txt(str(txt))
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\nformat: mosaic_mc\npath: x\nprompt: '{context}'\ntarget: ' {choice}'\nshots: 3\n")
    with pytest.raises(EvalError, match=r"t.yaml: unknown key\(s\) \['shots'\]"):
        T.load_task(str(spec))
    spec.write_text("name: t\nformat: mosaic_mc\npath: x\nprompt: '{question}'\ntarget: ' {choice}'\n")
    with pytest.raises(EvalError, match="names field 'question'"):
        T.render(T.load_task(str(spec)).prompt, dict(id="f:1", context="c"), str(spec))


def test_unknown_task_and_missing_data(setup, tmp_path):
    with pytest.raises(EvalError, match="unknown task 'hellaswg'; did you mean 'hellaswag'"):
        T.load_task("hellaswg")
    with pytest.raises(EvalError, match="does not exist; set --data-root"):
        harness.evaluate_task(setup["em"], T.load_task("piqa"), data_root=str(tmp_path))


def test_tokenizer_larger_than_model_vocab_is_refused(setup):
    small, params = random_model("llama", vocab_size=100, dataset=setup["config"].data.sources[0].path)
    with pytest.raises(EvalError, match="trained with another tokenizer"):
        from_params(small, params)
    with pytest.raises(EvalError, match="vocabulary differs"):
        from_params(setup["config"], params)


def test_real_sets_load(shared_data):
    """The copies in ../shared/data parse with the built-in specs (no model needed)."""
    for name, count in [("hellaswag", 10042), ("piqa", 1838), ("winogrande", 1267), ("gsm8k", 1319),
                        ("lambada_openai", 5153), ("boolq", 3270)]:
        task = T.load_task(name)
        items = T.load_items(task, task.resolve(str(shared_data), task.path))
        assert len(items) == count, name
        assert math.isfinite(harness.random_baseline(task, items))
