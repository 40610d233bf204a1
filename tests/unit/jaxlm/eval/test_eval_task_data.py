"""Where n-shot task data comes from: --task-file, a local data root, else the Hugging Face Hub
through `datasets` (tested on local dataset folders: no network)."""

import json

import pytest

from jaxlm.eval import tasks as T
from jaxlm.eval.errors import EvalError
from tests.helpers import run_python, subprocess_env

datasets = pytest.importorskip("datasets")

# One row of each Hub dataset, in the Hub's own schema.
HUB_ROWS = {
    "arc": {"question": "Which is a gas?", "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]},
            "answerKey": "B"},
    "openbookqa": {"question_stem": "The sun is a", "choices": {"text": ["star", "moon"], "label": ["A", "B"]},
                   "answerKey": "A"},
    "commonsense_qa": {"question": "Where is a bank?", "choices": {"text": ["town", "sea"], "label": ["A", "B"]},
                       "answerKey": "A"},
    "hellaswag": {"activity_label": "Cooking", "ctx": "He cracks an egg [title] and", "label": "2",
                  "endings": ["a", "b", "c [header] d", "e"]},
    "piqa": {"goal": "Dry a cup", "sol1": "use a towel", "sol2": "use water", "label": 0},
    "boolq": {"question": "is the sky blue", "passage": "It is.", "answer": True},
    "winogrande": {"sentence": "Sam gave Kim a gift because _ was kind.", "option1": "Sam", "option2": "Kim",
                   "answer": "1"},
    "lambada": {"text": "the cat sat on the mat"},
    "gsm8k": {"question": "1 + 1?", "answer": "It is 2.\n#### 2"},
}
EXPECTED = {
    "arc": dict(context="Question: Which is a gas?", choices=["rock", "steam", "ice"], gold=1),
    "openbookqa": dict(context="The sun is a", choices=["star", "moon"], gold=0),
    "commonsense_qa": dict(context="Question: Where is a bank?\nChoices:\nA. town\nB. sea\nAnswer:",
                           choices=["A", "B"], gold=0),
    "hellaswag": dict(context="Cooking: He cracks an egg. and", choices=["a", "b", "c d", "e"], gold=2),
    "piqa": dict(context="Question: Dry a cup\n", choices=["use a towel", "use water"], gold=0),
    "boolq": dict(context="Passage: It is.\nQuestion: is the sky blue?", choices=["no", "yes"], gold=1),
    "winogrande": dict(contexts=["Sam gave Kim a gift because Sam", "Sam gave Kim a gift because Kim"],
                       continuation="was kind.", gold=0),
    "lambada": dict(context="the cat sat on the", continuation="mat"),
    "gsm8k": dict(context="1 + 1?", answer="It is 2.\n#### 2", targets=["2"]),
}


@pytest.mark.parametrize("rows", sorted(T.HUB_ROWS))
def test_hub_rows_become_the_items_local_files_give(rows):
    item = T.HUB_ROWS[rows][1](HUB_ROWS[rows], "ds[test]:0")
    assert item == EXPECTED[rows]


def test_every_builtin_hub_spec_names_known_rows_of_its_kind():
    hub = {name: T.load_task(name).hub for name in T.builtin_tasks()}
    for name in ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "boolq", "gsm8k"):
        assert hub[name] is not None and T.HUB_ROWS[hub[name]["rows"]][0] == T.load_task(name).kind, name


def _spec(tmp_path, dataset, **hub):
    spec = tmp_path / "tiny_arc.yaml"
    spec.write_text(json.dumps({"name": "tiny_arc", "format": "mosaic_mc", "path": "eval/tiny_arc.jsonl",
                                "prompt": "{context}\nAnswer:", "target": " {choice}",
                                "hub": {"dataset": str(dataset), "split": "test", "fewshot_split": "train",
                                        "rows": "arc", **hub}}))
    return T.load_task(str(spec))


def _arc_rows(n, offset=0):
    return [{**HUB_ROWS["arc"], "question": f"Q{i}?", "answerKey": "ABC"[i % 3]} for i in range(offset, offset + n)]


def test_hub_loader_reads_a_saved_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXLM_EVAL_DATA", raising=False)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(_arc_rows(5)),
                          "train": datasets.Dataset.from_list(_arc_rows(3, 100))}).save_to_disk(str(folder))
    task = _spec(tmp_path, folder)
    items, where = T.task_items(task)
    assert where == f"hub:{folder}[test]" and [it["gold"] for it in items] == [0, 1, 2, 0, 1]
    assert items[3] == dict(id=f"{folder}[test]:3", context="Question: Q3?", choices=["rock", "steam", "ice"], gold=0)
    demos, demo_where = T.task_items(task, fewshot=True)
    assert demo_where == f"hub:{folder}[train]" and [d["context"] for d in demos] == [
        "Question: Q100?", "Question: Q101?", "Question: Q102?"]


def test_hub_loader_reads_a_folder_of_json_files(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXLM_EVAL_DATA", raising=False)
    folder = tmp_path / "jsonfolder"
    folder.mkdir()
    with open(folder / "test.jsonl", "w") as f:
        for row in _arc_rows(4):
            f.write(json.dumps(row) + "\n")
    items, where = T.task_items(_spec(tmp_path, folder))
    assert where == f"hub:{folder}[test]" and [it["context"] for it in items] == [f"Question: Q{i}?" for i in range(4)]


def test_local_files_win_over_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXLM_EVAL_DATA", raising=False)
    local = tmp_path / "root" / "eval" / "tiny_arc.jsonl"
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps({"query": "Question: local?", "choices": ["x", "y"], "gold": 1}) + "\n")
    task = _spec(tmp_path, tmp_path / "no_such_dataset")
    assert T.data_source(task) == f"hub:{tmp_path / 'no_such_dataset'}[test]"
    items, where = T.task_items(task, data_root=str(tmp_path / "root"))
    assert where == str(local) and items[0]["context"] == "Question: local?"
    monkeypatch.setenv("JAXLM_EVAL_DATA", str(tmp_path / "root"))
    assert T.data_source(task) == f"file:{local}"
    assert T.data_source(task, data_file="/x.jsonl") == "file:/x.jsonl"


def test_hub_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXLM_EVAL_DATA", raising=False)
    task = _spec(tmp_path, tmp_path / "missing_dataset")
    with pytest.raises(EvalError, match=r"cannot load .*missing_dataset\[test\] with `datasets`.*Offline, give the "
                                        r"data as local files: --data-root DIR holding 'eval/tiny_arc.jsonl', or "
                                        r"--task-file tiny_arc=PATH"):
        T.task_items(task)


def _cli(*args, env=None):
    return run_python("-m", "jaxlm.eval", *args, timeout=180, env=subprocess_env(**(env or {})))


def test_list_tasks_says_where_each_tasks_data_comes_from(tmp_path):
    env = {"JAXLM_EVAL_DATA": ""}
    out = _cli("--list-tasks", env=env)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert rows["hellaswag"].endswith("hub:Rowan/hellaswag[validation]")
    assert rows["arc_easy"].endswith("hub:allenai/ai2_arc/ARC-Easy[test]")
    assert "local files only: --data-root DIR holding" in rows["copa"]
    out = _cli("--list-tasks", "--data-root", str(tmp_path), env=env)
    assert f"file:{tmp_path}/eval/hellaswag/hellaswag_val_full.txt.bz2" in out.stdout


def test_missing_local_task_data_fails_before_the_model_loads(tmp_path):
    """The workdir does not exist either: the task data is checked first, so its message comes."""
    out = _cli("--workdir", str(tmp_path / "no_run"), "--tasks", "piqa", "--data-root", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.startswith("error: task piqa: data file") and "does not exist; set --data-root" in out.stderr
