"""Benchmark tasks: a YAML spec per task (templates/), and loaders for the formats sets come in.

A loader turns a file into items with the fields of the task's kind:
  multiple_choice  context, choices[], gold        (HellaSwag, PIQA, ARC, BoolQ, COPA, OpenBookQA, ...)
  schema           contexts[], continuation, gold  (WinoGrande / WSC: the continuation is scored
                                                    after each context)
  cloze            context, continuation           (LAMBADA: greedy match of the last word)
  generate         context, answer, targets[]      (GSM8K: generate, extract, exact match)
Every item also has `id` ("file:line"). Errors in a file name the file and line.

Formats: hellaswag_jsonl (the original release), hellaswag_txt (6 lines per item, optionally
.bz2), hellaswag (either, by file name), mosaic_mc / mosaic_schema / mosaic_lm / mosaic_qa (MosaicML ICL jsonl), gsm8k (jsonl).

Where a task's data comes from, first match wins (`data_source` says which):
  1. a file given for the task (--task-file NAME=PATH);
  2. a local data root (--data-root, else $JAXLM_EVAL_DATA): the spec's `path` under it;
  3. the Hugging Face Hub, as lm-evaluation-harness reads it: the spec's `hub` (dataset, config,
     split) through `datasets` (downloaded once, then from its cache; HF_DATASETS_OFFLINE=1 works
     from the cache alone). `hub.dataset` may also be a local folder: one written by
     `Dataset.save_to_disk`, or JSON / parquet files. Rows become items by `hub.rows` (HUB_ROWS).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import os
import re
import string
from typing import Any, Callable, Iterator, Optional

import yaml

from jaxlm.eval.errors import EvalError
from jaxlm.extras import require

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
KINDS = ("multiple_choice", "schema", "cloze", "generate")


def default_data_root() -> Optional[str]:
    """The local data root when none is given: $JAXLM_EVAL_DATA, else None (the Hub)."""
    return os.environ.get("JAXLM_EVAL_DATA") or None


# ----------------------------------------------------------------------------------------------
# Reading files


def _open_text(path: str):
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise EvalError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _field(record: dict, key: str, kind: type, where: str):
    if key not in record:
        raise EvalError(f"{where}: missing field {key!r} (has {sorted(record)})")
    value = record[key]
    if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if kind is list and isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise EvalError(f"{where}: field {key!r} must be a list of strings")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise EvalError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r:.60}")
    return value


def _gold(record: dict, key: str, n: int, where: str) -> int:
    gold = _field(record, key, int, where)
    if not 0 <= gold < n:
        raise EvalError(f"{where}: {key}={gold} is not an index into the {n} choices")
    return gold


def _hellaswag_clean(text: str) -> str:
    """WikiHow contexts carry markup like ' [title]' and '[header]'; drop it as is usual for HellaSwag."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag_jsonl(path: str) -> list[dict]:  # the release's rows are the Hub's rows
    return [dict(id=f"{path}:{n}", **_row_hellaswag(r, f"{path}:{n}")) for n, r in _jsonl(path)]


def load_hellaswag_txt(path: str) -> list[dict]:
    """6 lines per item: '<activity_label>: <ctx>', gold index, four endings."""
    with _open_text(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise EvalError(f"{path}:{len(lines)}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings "
                        "per item); the file is truncated or not in this layout")
    items = []
    for start in range(0, len(lines), 6):
        label = lines[start + 1].strip()
        if label not in ("0", "1", "2", "3"):
            raise EvalError(f"{path}:{start + 2}: expected the gold ending index 0-3, got {label!r:.40}")
        where = f"{path}:{start + 1}"
        items.append(dict(id=where, context=_hellaswag_clean(lines[start]),
                          choices=[_hellaswag_clean(e) for e in lines[start + 2:start + 6]], gold=int(label)))
    return items


def load_mosaic_mc(path: str) -> list[dict]:
    items = []
    for number, r in _jsonl(path):
        where = f"{path}:{number}"
        choices = _field(r, "choices", list, where)
        items.append(dict(id=where, context=_field(r, "query", str, where), choices=choices,
                          gold=_gold(r, "gold", len(choices), where)))
    return items


def load_mosaic_schema(path: str) -> list[dict]:
    items = []
    for number, r in _jsonl(path):
        where = f"{path}:{number}"
        contexts = _field(r, "context_options", list, where)
        items.append(dict(id=where, contexts=contexts, continuation=_field(r, "continuation", str, where),
                          gold=_gold(r, "gold", len(contexts), where)))
    return items


def load_mosaic_lm(path: str) -> list[dict]:
    return [dict(id=f"{path}:{n}", context=_field(r, "context", str, f"{path}:{n}"),
                 continuation=_field(r, "continuation", str, f"{path}:{n}")) for n, r in _jsonl(path)]


def load_mosaic_qa(path: str) -> list[dict]:
    items = []
    for number, r in _jsonl(path):
        where = f"{path}:{number}"
        answer = _field(r, "answer", str, where)
        aliases = _field(r, "aliases", list, where) if "aliases" in r else []
        items.append(dict(id=where, context=_field(r, "context", str, where), answer=answer,
                          targets=[answer] + [a for a in aliases if a != answer]))
    return items


def load_gsm8k(path: str) -> list[dict]:  # the release's rows are the Hub's rows
    return [dict(id=f"{path}:{n}", **_row_gsm8k(r, f"{path}:{n}")) for n, r in _jsonl(path)]


def load_hellaswag(path: str) -> list[dict]:
    return load_hellaswag_jsonl(path) if ".jsonl" in os.path.basename(path) else load_hellaswag_txt(path)


LOADERS: dict[str, tuple[str, Callable[[str], list[dict]]]] = {
    "hellaswag": ("multiple_choice", load_hellaswag),
    "hellaswag_jsonl": ("multiple_choice", load_hellaswag_jsonl),
    "hellaswag_txt": ("multiple_choice", load_hellaswag_txt),
    "mosaic_mc": ("multiple_choice", load_mosaic_mc),
    "mosaic_schema": ("schema", load_mosaic_schema),
    "mosaic_lm": ("cloze", load_mosaic_lm),
    "mosaic_qa": ("generate", load_mosaic_qa),
    "gsm8k": ("generate", load_gsm8k),
}


# ----------------------------------------------------------------------------------------------
# Hugging Face Hub datasets: one row -> one item of the same fields the local loaders give


def _letter_choices(r: dict, where: str) -> tuple[list[str], int]:
    """ARC / OpenBookQA / CommonsenseQA rows: choices {text[], label[]} and answerKey."""
    choices = _field(r, "choices", dict, where)
    texts, labels = choices.get("text"), choices.get("label")
    if not (isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels)):
        raise EvalError(f"{where}: field 'choices' must hold equally long 'text' and 'label' lists")
    key = _field(r, "answerKey", str, where)
    if key not in labels:
        raise EvalError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    return texts, labels.index(key)


def _row_arc(r, where):
    texts, gold = _letter_choices(r, where)
    return dict(context=f"Question: {_field(r, 'question', str, where)}", choices=texts, gold=gold)


def _row_openbookqa(r, where):
    texts, gold = _letter_choices(r, where)
    return dict(context=_field(r, "question_stem", str, where), choices=texts, gold=gold)


def _row_commonsense_qa(r, where):
    texts, gold = _letter_choices(r, where)
    letters = [chr(ord("A") + i) for i in range(len(texts))]
    listed = "".join(f"\n{letter}. {text}" for letter, text in zip(letters, texts))
    return dict(context=f"Question: {_field(r, 'question', str, where)}\nChoices:{listed}\nAnswer:",
                choices=letters, gold=gold)


def _row_hellaswag(r, where):
    endings = _field(r, "endings", list, where)
    context = f"{_field(r, 'activity_label', str, where)}: {_field(r, 'ctx', str, where)}"
    return dict(context=_hellaswag_clean(context), choices=[_hellaswag_clean(e) for e in endings],
                gold=_gold(r, "label", len(endings), where))


def _row_piqa(r, where):
    choices = [_field(r, "sol1", str, where), _field(r, "sol2", str, where)]
    return dict(context=f"Question: {_field(r, 'goal', str, where)}\n", choices=choices,
                gold=_gold(r, "label", 2, where))


def _row_boolq(r, where):
    answer = _field(r, "answer", bool, where)
    question = _field(r, "question", str, where)
    return dict(context=f"Passage: {_field(r, 'passage', str, where)}\nQuestion: {question}?",
                choices=["no", "yes"], gold=int(answer))


def _row_winogrande(r, where):
    sentence = _field(r, "sentence", str, where)
    if sentence.count("_") != 1:
        raise EvalError(f"{where}: a WinoGrande sentence has one '_' blank, got {sentence!r:.80}")
    before, after = sentence.split("_")
    answer = _field(r, "answer", str, where)
    if answer not in ("1", "2"):
        raise EvalError(f"{where}: answer must be '1' or '2', got {answer!r}")
    options = [_field(r, "option1", str, where), _field(r, "option2", str, where)]
    return dict(contexts=[before + o for o in options], continuation=after.strip(), gold=int(answer) - 1)


def _row_lambada(r, where):
    context, _, last = _field(r, "text", str, where).rpartition(" ")
    return dict(context=context, continuation=last)


def _row_gsm8k(r, where):
    answer = _field(r, "answer", str, where)
    final = answer.rsplit("####", 1)
    if len(final) != 2:
        raise EvalError(f"{where}: the answer has no '#### <number>' final line")
    return dict(context=_field(r, "question", str, where), answer=answer, targets=[normalize_number(final[1])])


HUB_ROWS: dict[str, tuple[str, Callable[[dict, str], dict]]] = {
    "arc": ("multiple_choice", _row_arc),
    "boolq": ("multiple_choice", _row_boolq),
    "commonsense_qa": ("multiple_choice", _row_commonsense_qa),
    "gsm8k": ("generate", _row_gsm8k),
    "hellaswag": ("multiple_choice", _row_hellaswag),
    "lambada": ("cloze", _row_lambada),
    "openbookqa": ("multiple_choice", _row_openbookqa),
    "piqa": ("multiple_choice", _row_piqa),
    "winogrande": ("schema", _row_winogrande),
}
HUB_KEYS = ("dataset", "config", "split", "fewshot_split", "rows")


def load_hub_items(task: "Task", split: str) -> list[dict]:
    """The task's items from `task.hub` (a Hub dataset id or a local dataset folder)."""
    hub = task.hub
    require("hf", "datasets", needed_by=f"task {task.name}'s data from the Hugging Face Hub")
    import datasets  # optional and slow to import: only when a task reads the Hub

    where = f"{_hub_name(hub)}[{split}]"
    try:
        if os.path.isfile(os.path.join(hub["dataset"], "dataset_dict.json")) or \
                os.path.isfile(os.path.join(hub["dataset"], "state.json")):
            rows = datasets.load_from_disk(hub["dataset"])
            rows = rows[split] if isinstance(rows, datasets.DatasetDict) else rows
        else:
            rows = datasets.load_dataset(hub["dataset"], hub.get("config"), split=split)
    except Exception as e:  # network, missing split, unknown dataset: datasets raises many types
        raise EvalError(
            f"task {task.name}: cannot load {where} with `datasets` ({type(e).__name__}: {str(e)[:200]}). "
            f"Offline, give the data as local files: --data-root DIR holding {task.path!r}, or "
            f"--task-file {task.name}=PATH") from None
    convert = HUB_ROWS[hub["rows"]][1]
    return [dict(id=f"{where}:{i}", **convert(row, f"{where}:{i}")) for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------------------------
# Answers of generation tasks


def normalize_number(text: str) -> str:
    """'1,234.50' -> '1234.5', '$18' -> '18': how GSM8K answers are compared."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def normalize_text(text: str) -> str:
    """Lower-case, no punctuation or articles, single spaces: how short answers are compared."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


_NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def extract_answer(generation: str, pattern: Optional[str], numeric: bool) -> Optional[str]:
    """The answer in a generation: the first group of `pattern` (strict), or else None."""
    if pattern:
        m = re.search(pattern, generation)
        if not m:
            return None
        found = m.group(1) if m.groups() else m.group(0)
    else:
        found = generation.strip().split("\n")[0]
    return normalize_number(found) if numeric else normalize_text(found)


def last_number(generation: str) -> Optional[str]:
    """The last number in a generation (the 'flexible' extraction)."""
    numbers = _NUMBER.findall(generation)
    return normalize_number(numbers[-1]) if numbers else None


# ----------------------------------------------------------------------------------------------
# Task specs


@dataclasses.dataclass
class Task:
    name: str
    kind: str
    format: str
    path: str  # relative to the data root, or absolute
    prompt: str  # str.format template over the item's fields -> the text before what is scored
    target: str  # -> the scored continuation (multiple_choice: also {choice}; generate: a demo's answer)
    fewshot_path: Optional[str] = None  # a separate split for demonstrations; None: the same file
    fewshot_separator: str = "\n\n"
    stop: list[str] = dataclasses.field(default_factory=list)  # generate
    max_new_tokens: int = 256  # generate
    extract: Optional[str] = None  # generate: regex whose group 1 is the answer
    numeric: bool = False  # generate: compare as numbers
    description: str = ""
    hub: Optional[dict] = None  # {dataset, config, split, fewshot_split, rows}: see the module docstring
    source: str = ""  # the YAML file

    def resolve(self, data_root: str, path: Optional[str]) -> Optional[str]:
        if path is None:
            return None
        return path if os.path.isabs(path) else os.path.join(data_root, path)


def _task_from_dict(raw: Any, source: str) -> Task:
    if not isinstance(raw, dict):
        raise EvalError(f"{source}: a task spec must be a mapping of keys")
    fields = {f.name for f in dataclasses.fields(Task)} - {"source"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise EvalError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    for key in ("name", "format", "path", "prompt", "target"):
        if not isinstance(raw.get(key), str):
            raise EvalError(f"{source}: {key!r} must be given as a string")
    if raw["format"] not in LOADERS:
        raise EvalError(f"{source}: format {raw['format']!r} is unknown; choose one of {sorted(LOADERS)}")
    kind = LOADERS[raw["format"]][0]
    if raw.get("kind", kind) != kind:
        raise EvalError(f"{source}: format {raw['format']} makes {kind} items, not {raw['kind']}")
    types = dict(stop=list, max_new_tokens=int, numeric=bool, fewshot_separator=str, description=str)
    for key, kind_ in types.items():
        if key in raw and not isinstance(raw[key], kind_):
            raise EvalError(f"{source}: {key!r} must be a {kind_.__name__}, got {raw[key]!r}")
    if not all(isinstance(x, str) for x in raw.get("stop", [])):
        raise EvalError(f"{source}: 'stop' must be a list of strings")
    hub = raw.get("hub")
    if hub is not None:
        if not isinstance(hub, dict) or not {"dataset", "split", "rows"} <= set(hub) or set(hub) - set(HUB_KEYS):
            raise EvalError(f"{source}: 'hub' must be a mapping with dataset, split and rows (and optionally "
                            f"config, fewshot_split); got {hub!r:.120}")
        if hub["rows"] not in HUB_ROWS:
            raise EvalError(f"{source}: hub rows {hub['rows']!r} is unknown; choose one of {sorted(HUB_ROWS)}")
        if HUB_ROWS[hub["rows"]][0] != kind:
            raise EvalError(f"{source}: hub rows {hub['rows']} make {HUB_ROWS[hub['rows']][0]} items, not {kind}")
    task = Task(**{**raw, "kind": kind}, source=source)
    if task.extract is not None:
        try:
            re.compile(task.extract)
        except re.error as e:
            raise EvalError(f"{source}: extract {task.extract!r} is not a valid regex ({e})") from None
    return task


def builtin_tasks() -> dict[str, str]:
    """Task name -> its YAML file in templates/."""
    return {name[:-5]: os.path.join(TEMPLATE_DIR, name) for name in sorted(os.listdir(TEMPLATE_DIR))
            if name.endswith(".yaml")}


def load_task(name_or_path: str) -> Task:
    """A built-in task by name, or a task spec YAML file."""
    path = name_or_path if name_or_path.endswith((".yaml", ".yml")) else builtin_tasks().get(name_or_path)
    if path is None:
        import difflib
        known = builtin_tasks()
        close = difflib.get_close_matches(name_or_path, list(known), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise EvalError(f"unknown task {name_or_path!r}; {hint}known tasks: {', '.join(known)} "
                        "(or give a task spec .yaml file)")
    if not os.path.isfile(path):
        raise EvalError(f"task spec {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise EvalError(f"{path}: not valid YAML ({e})") from None
    return _task_from_dict(raw, path)


def data_source(task: Task, data_root: Optional[str] = None, data_file: Optional[str] = None) -> str:
    """Where the task's items come from: "file:PATH" or "hub:DATASET[SPLIT]" (module docstring)."""
    if data_file:
        return f"file:{data_file}"
    root = data_root or default_data_root()
    if root or os.path.isabs(task.path):  # an absolute path in a spec is a local file wherever it runs
        return f"file:{task.resolve(root or '', task.path)}"
    if task.hub is None:
        raise EvalError(f"task {task.name} has no Hub dataset in its spec; give its data with --data-root "
                        f"DIR (holding {task.path!r}) or --task-file {task.name}=PATH")
    return f"hub:{_hub_name(task.hub)}[{task.hub['split']}]"


def _hub_name(hub: dict) -> str:
    return f"{hub['dataset']}/{hub['config']}" if hub.get("config") else hub["dataset"]


def task_items(task: Task, data_root: Optional[str] = None, data_file: Optional[str] = None,
               fewshot: bool = False) -> tuple[list[dict], str]:
    """(items, where they came from). `fewshot`: the demonstrations' split, (None, "") when the spec
    has none (demonstrations then come from the items themselves)."""
    where = data_source(task, data_root, data_file)
    if where.startswith("hub:"):
        split = task.hub.get("fewshot_split") if fewshot else task.hub["split"]
        if split is None:
            return None, ""
        return load_hub_items(task, split), f"hub:{_hub_name(task.hub)}[{split}]"
    if fewshot:
        root = data_root or default_data_root()
        path = task.resolve(root or "", task.fewshot_path) if root or (
            task.fewshot_path and os.path.isabs(task.fewshot_path)) else None
        return (load_items(task, path), path) if path else (None, "")
    path = where[len("file:"):]
    return load_items(task, path), path


def check_data(task: Task, data_root: Optional[str] = None, data_file: Optional[str] = None) -> None:
    """Fails now (before a model loads) when a task's local data file is missing."""
    where = data_source(task, data_root, data_file)
    if where.startswith("file:") and not os.path.isfile(where[len("file:"):]):
        load_items(task, where[len("file:"):])  # raises the message that says what to do


def load_items(task: Task, path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise EvalError(f"task {task.name}: data file {path!r} does not exist; set --data-root (or "
                        f"$JAXLM_EVAL_DATA) to the folder holding {task.path!r}, or give the file with "
                        f"--task-file {task.name}=PATH")
    try:
        items = LOADERS[task.format][1](path)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: cannot be read as {task.format} ({e})") from None
    if not items:
        raise EvalError(f"{path}: holds no items")
    return items


def render(template: str, item: dict, where: str, **extra) -> str:
    try:
        return template.format(**item, **extra)
    except (KeyError, IndexError) as e:
        raise EvalError(f"{where}: template {template!r} names field {e} which {item['id']} does not have "
                        f"(fields: {sorted(set(item) | set(extra))})") from None
