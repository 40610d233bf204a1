"""The data_prep config: YAML (safe_load) -> typed dataclasses, validated before any work.

    python -m data_prep --config data_prep/configs/demo.yaml tokenizer.vocab_size=8192 sources.stdlib.weight=1

Overrides are `key.path=value`; the value is parsed as YAML (`8` is an int, `true` a bool,
`[a, b]` a list). A list of sources is addressed by index or by name (`sources.0.weight`,
`sources.stdlib.weight`). Unknown keys fail naming the closest valid key; wrong types fail naming
the key (jaxlm.schema builds the tree). Relative paths (output, source paths, files named in stages) are resolved against the
working directory. `stages` is a list of stage specs (data_prep/stages/registry.py), checked here
too; overrides address one by index or by its name (its type when it has none), e.g.
`stages.minhash_dedup.bands=20`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Annotated, Any, Literal, Optional

import yaml

from data_prep.errors import ConfigError
from jaxlm import schema

SOURCE_TYPES = ("txt", "jsonl", "parquet", "html", "warc", "hf", "pydoc_topics", "python_stdlib",
                "alpaca", "self_instruct", "chat", "cot", "python_instruct", "hh_rlhf", "pairs", "alpaca_eval")
# instruction examples (data_prep/instruct.py): conversations, written as records with a loss mask
INSTRUCT_SOURCE_TYPES = ("alpaca", "self_instruct", "chat", "cot", "python_instruct")
# preference pairs (data_prep/preference.py): a prompt with a chosen and a rejected response, written
# as "pair" records; a dataset holds pairs only
PAIR_SOURCE_TYPES = ("hh_rlhf", "pairs", "alpaca_eval")
FILE_SOURCE_TYPES = ("txt", "jsonl", "parquet", "html", "warc", "alpaca", "self_instruct", "chat", "cot",
                     "hh_rlhf", "pairs", "alpaca_eval")
HTML_SOURCE_TYPES = ("html", "warc")  # their documents are raw HTML: an html_extract stage must apply to them
HF_KEYS = ("dataset", "dataset_config", "dataset_split", "streaming")
RESERVED_STAGE_NAMES = ("read", "split", "encode")  # the pipeline's own steps, reported beside the stages


@dataclasses.dataclass
class SplitConfig:
    """How documents are divided into train and val.

    by: hash      -> a document goes to val when hash(seed, document id) falls below val_fraction.
    by: position  -> the last val_fraction of every document (in characters) becomes val; the
                     classic held-out tail of a single file (nanoGPT's shakespeare_char split).
    """

    by: Literal["hash", "position"] = "hash"
    val_fraction: float = 0.01


@dataclasses.dataclass
class SourceConfig:
    name: str
    # html: every file is one page; warc: every HTML response record of a WARC file is one page;
    # both have their text extracted by an `html_extract` stage.
    # hf: a Hugging Face dataset, read with `datasets.load_dataset` (pip install "jaxlm[hf]")
    # alpaca, self_instruct, chat, cot: instruction examples (JSON list or JSONL files), python_instruct:
    # the embedded demo set from the standard library's docstrings (see data_prep/instruct.py)
    # hh_rlhf, pairs, alpaca_eval: preference pairs (see data_prep/preference.py)
    type: Literal["txt", "jsonl", "parquet", "html", "warc", "hf", "pydoc_topics", "python_stdlib",
                  "alpaca", "self_instruct", "chat", "cot", "python_instruct", "hh_rlhf", "pairs", "alpaca_eval"]
    # files or globs (txt, jsonl, parquet, html, warc); hf: the builder's data_files (e.g. dataset: json)
    paths: list[str] = dataclasses.field(default_factory=list)
    text_field: str = "text"  # jsonl key / parquet column / hf column holding the document
    weight: float = 1.0  # target share for a `mix` stage that sets no weights; else only recorded
    # txt only: null = the whole file is one document; "blank_line" = paragraphs; "line" = every line
    doc_separator: Optional[Literal["blank_line", "line"]] = None
    max_files: Optional[int] = None  # python_stdlib, python_instruct: cap on files (chosen by a stable hash of the path)
    max_bytes: Optional[int] = None  # python_stdlib, python_instruct: cap on total source bytes
    split: Optional[SplitConfig] = None  # null = the dataset's `split`
    # hf only: load_dataset(dataset, dataset_config, split=dataset_split, streaming=streaming)
    dataset: Optional[str] = None  # a Hub name ("HuggingFaceFW/fineweb"), a builder ("json") or a folder
    dataset_config: Optional[str] = None
    dataset_split: str = "train"
    streaming: bool = True  # false downloads and prepares the whole split in the HF cache first


@dataclasses.dataclass
class TokenizerConfig:
    """A SentencePiece model trained on the train split, or an existing one (`path`).

    Text is not normalised (identity rule, whitespace kept, no dummy prefix) and '\\n' is always a
    piece of its own, so decode(encode(text)) == text; with byte_fallback no character is unknown.
    Default special ids: pad 0, unk 1, bos 2, eos 3 (pad 0 so zero-filled arrays read as padding).
    With `path` the ids come from that model and the training fields are ignored.
    """

    path: Optional[str] = None
    model_type: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: Optional[int] = 8192  # char: null = one piece per character seen, plus specials
    byte_fallback: bool = True
    split_digits: bool = True
    character_coverage: float = 0.9995  # char models always use 1.0
    user_defined_symbols: list[str] = dataclasses.field(default_factory=list)
    pad_id: int = 0  # -1 = no padding piece
    unk_id: int = 1
    bos_id: int = 2  # -1 = no BOS piece (then add_bos must be false)
    eos_id: int = 3
    add_bos: bool = False  # every record is [BOS] + tokens + EOS
    input_sentence_size: int = 1_000_000  # sentences sampled for training; 0 = all
    max_sentence_length: int = 4192  # bytes; longer lines are cut into pieces, never dropped
    num_threads: int = 8  # fixed, not the core count: the trained model depends on it
    roundtrip_check_documents: int = 256  # per split: decode the first N records and compare


@dataclasses.dataclass
class ChatConfig:
    """How instruction examples become records (used when a source is an instruction type).

    template: a Jinja2 chat template file; null = jaxlm's default (jaxlm/data/chat.py). It is copied
      into the output as chat_template.jinja, beside tokenizer.model.
    special_tokens: pieces the template uses; null = the default template's. Any the tokenizer lacks
      are appended to it as user-defined pieces (old ids unchanged) or, when one is trained, reserved.
    end_of_turn: the token that ends a turn (generation stops there); null = the default's <|end|>.
    max_tokens: examples longer than this many tokens are truncated to their first max_tokens (the
      tail is dropped; an example left without any response token is dropped); both counted in the
      manifest. Set it to the context length of the model to be tuned.
    """

    template: Optional[str] = None
    special_tokens: Optional[list[str]] = None
    end_of_turn: Optional[str] = None
    max_tokens: int = 2048


@dataclasses.dataclass
class ShardConfig:
    # each (split, source) pair is cut into ceil(text MB / target_mb) shards of whole documents
    target_mb: float = 256.0


@dataclasses.dataclass
class ExecutorConfig:
    """Where the stages' tasks run; every choice writes the same bytes.

    local: a pool of `workers` processes on this machine (1 = in this process).
    ray:   Ray tasks; address null starts Ray here with `workers` CPUs, "auto" or
           "ray://host:port" joins a cluster (the output folder and inputs must then be on
           storage every node sees).
    """

    kind: Literal["local", "ray"] = "local"
    address: Optional[str] = None


@dataclasses.dataclass
class Config:
    output: str
    sources: list[SourceConfig]
    seed: int = 0
    # document stages between reading and the split, in order: [{type: ..., option: value}, ...]
    stages: list[Annotated[dict[str, Any], "{type: gopher_quality}"]] = dataclasses.field(default_factory=list)
    # file-sharded tasks the sources are read and the stages run as (rank r reads every
    # tasks-th file of each source); 0 = one per worker. The output does not depend on it.
    tasks: int = 0
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    chat: ChatConfig = dataclasses.field(default_factory=ChatConfig)
    shards: ShardConfig = dataclasses.field(default_factory=ShardConfig)
    workers: int = 0  # processes on this machine (stage tasks, encoding); 0 = every core

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def split_for(self, source: SourceConfig) -> SplitConfig:
        return source.split if source.split is not None else self.split

    def instruct(self) -> bool:
        """Whether the dataset's records are rendered with the chat template and carry loss masks
        (instruction examples or preference pairs)."""
        return any(src.type in INSTRUCT_SOURCE_TYPES + PAIR_SOURCE_TYPES for src in self.sources)

    def pairs(self) -> bool:
        """Whether the dataset holds preference pairs ("pair" records)."""
        return any(src.type in PAIR_SOURCE_TYPES for src in self.sources)


# --- loading -----------------------------------------------------------------------------------


def load_config(path: str, overrides: list[str] = ()) -> Config:
    """Reads a YAML config, applies `key.path=value` overrides, returns a validated Config."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass e.g. --config data_prep/configs/demo.yaml")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    return config_from_dict(raw, overrides)


def config_from_dict(raw: dict[str, Any], overrides: list[str] = ()) -> Config:
    raw = copy.deepcopy(raw)
    try:
        schema.apply_overrides(raw, Config, overrides)
        cfg = schema.build(Config, raw)
    except schema.ConfigError as e:
        raise ConfigError(str(e)) from None
    for spec in cfg.stages:  # a mix without weights mixes by the sources' weights
        if spec.get("type") == "mix" and "weights" not in spec:
            spec["weights"] = {src.name: src.weight for src in cfg.sources}
    validate(cfg)
    return cfg


# --- validation beyond types ----------------------------------------------------------------------


def validate(cfg: Config) -> None:
    if not cfg.output:
        raise ConfigError("'output' must name the folder to write, e.g. output=data/my_dataset")
    if not cfg.sources:
        raise ConfigError("'sources' is empty; list at least one source (see data_prep/configs/demo.yaml)")
    if cfg.workers < 0:
        raise ConfigError(f"'workers' must be >= 0 (0 = every core), got {cfg.workers}")
    if cfg.tasks < 0:
        raise ConfigError(f"'tasks' must be >= 0 (0 = one per worker), got {cfg.tasks}")
    if not cfg.shards.target_mb > 0:
        raise ConfigError(f"'shards.target_mb' must be > 0, got {cfg.shards.target_mb}")
    _validate_split(cfg.split, "split")
    seen = set()
    for i, src in enumerate(cfg.sources):
        key = f"sources.{i}"
        if not src.name or any(c in src.name for c in "/:. ") or src.name in seen:
            raise ConfigError(f"{key}.name {src.name!r} must be unique, non-empty and free of '/', ':', '.' and spaces")
        seen.add(src.name)
        key = f"sources.{src.name}"
        if not src.weight > 0:
            raise ConfigError(f"{key}.weight must be > 0, got {src.weight}")
        if src.type in FILE_SOURCE_TYPES and not src.paths:
            raise ConfigError(f"{key}.paths is empty; a {src.type} source needs files or globs")
        if src.type not in FILE_SOURCE_TYPES + ("hf",) and src.paths:
            raise ConfigError(f"{key}.paths is set but a {src.type} source reads the running Python; remove it")
        if src.type == "hf" and not src.dataset:
            raise ConfigError(f"{key}.dataset is required for an hf source: a Hub name such as "
                              "HuggingFaceFW/fineweb-edu, or a builder such as json with the files in 'paths'")
        hf_keys_set = [f.name for f in dataclasses.fields(src) if f.name in HF_KEYS and getattr(src, f.name) != f.default]
        if src.type != "hf" and hf_keys_set:
            raise ConfigError(f"{key}.{hf_keys_set[0]} applies to hf sources only")
        if src.type == "hf" and not src.dataset_split:
            raise ConfigError(f"{key}.dataset_split must name a split of the dataset, e.g. train")
        if src.doc_separator is not None and src.type != "txt":
            raise ConfigError(f"{key}.doc_separator applies to txt sources only")
        if (src.max_files is not None or src.max_bytes is not None) and src.type not in ("python_stdlib", "python_instruct"):
            raise ConfigError(f"{key}.max_files / max_bytes apply to python_stdlib sources only "
                              "(and python_instruct, made from the same files)")
        for cap in ("max_files", "max_bytes"):
            if getattr(src, cap) is not None and getattr(src, cap) <= 0:
                raise ConfigError(f"{key}.{cap} must be > 0 or null")
        if src.split is not None:  # a source may go to val whole (a held-out evaluation set)
            _validate_split(src.split, f"{key}.split", whole_val_allowed=True)
    others = [src.name for src in cfg.sources if src.type not in PAIR_SOURCE_TYPES]
    if cfg.pairs() and others:
        raise ConfigError(f"sources {others} are not preference pairs, but the others are: a dataset holds pairs "
                          "only (one record layout); prepare them as separate datasets")
    _validate_tokenizer(cfg.tokenizer)
    _validate_chat(cfg)
    _validate_stages(cfg)


def _validate_chat(cfg: Config) -> None:
    chat = cfg.chat
    if chat.template is not None and not os.path.isfile(chat.template):
        raise ConfigError(f"chat.template {chat.template!r} does not exist; give a Jinja2 file or remove the key for the default")
    if chat.template is not None and chat.end_of_turn is None:
        raise ConfigError("chat.end_of_turn is required with chat.template: the token your template ends a turn with")
    if chat.max_tokens < 2:
        raise ConfigError(f"chat.max_tokens must be >= 2, got {chat.max_tokens}")
    if any(not isinstance(t, str) or not t for t in chat.special_tokens or []):
        raise ConfigError("chat.special_tokens must be non-empty strings")


def _validate_stages(cfg: Config) -> None:
    """Builds every stage (unknown types, keys and values fail here, before any work) and checks
    that the source names they use exist."""
    from data_prep.stages import build_stages  # the stage modules are only needed from here on
    from data_prep.stages.base import Mapper

    stages = build_stages(cfg.stages)
    names = [src.name for src in cfg.sources]
    for i, (spec, stage) in enumerate(zip(cfg.stages, stages)):
        if stage.name in RESERVED_STAGE_NAMES:
            raise ConfigError(f"stages.{i}: the name {stage.name!r} is the pipeline's own step; give the stage another 'name'")
        used = list(spec.get("sources", [])) + (list(spec["weights"]) if spec["type"] == "mix" else [])
        unknown = [s for s in used if s not in names]
        if unknown:
            raise ConfigError(f"stages.{stage.name} names source(s) {unknown} that the config does not have; "
                              f"sources are: {', '.join(names)}")
        unweighted = [s for s in names if spec["type"] == "mix" and s not in spec["weights"]]
        if unweighted:
            raise ConfigError(f"stages.{stage.name}.weights has no weight for source(s) {unweighted}; "
                              "give each source a target share (0 drops it), or leave out 'weights' to use the sources' weights")
    # instruction examples carry their structure in meta["messages"]: a stage that rewrites text would
    # leave it out of step, so only stages that keep or drop whole documents may see them
    for src in (s for s in cfg.sources if s.type in INSTRUCT_SOURCE_TYPES + PAIR_SOURCE_TYPES):
        for spec, stage in zip(cfg.stages, stages):
            rewrites = spec["type"] == "decontaminate" and spec.get("policy", "drop") != "drop"
            if rewrites or (isinstance(stage, Mapper) and stage.applies_to_source(src.name)):
                raise ConfigError(f"stage {stage.name!r} rewrites text, which would break the prompt/response structure "
                                  f"of {'preference' if src.type in PAIR_SOURCE_TYPES else 'instruction'} source {src.name!r}; limit it with 'sources:' to other sources "
                                  "(decontaminate: use policy: drop)")
    for src in cfg.sources:
        if src.type in HTML_SOURCE_TYPES and not any(spec["type"] == "html_extract" and stage.applies_to_source(src.name)
                                                     for spec, stage in zip(cfg.stages, stages)):
            raise ConfigError(f"source {src.name!r} is {src.type} but no html_extract stage applies to it; "
                              f"add {{type: html_extract}} to 'stages' (before the filters)")


def _validate_split(split: SplitConfig, key: str, whole_val_allowed: bool = False) -> None:
    if whole_val_allowed and split.val_fraction == 1.0 and split.by == "hash":
        return
    if not 0.0 <= split.val_fraction < 1.0:
        raise ConfigError(f"{key}.val_fraction must be in [0, 1), got {split.val_fraction}"
                          + (" (1 puts a whole source in val, with by: hash)" if whole_val_allowed else ""))


def _validate_tokenizer(tok: TokenizerConfig) -> None:
    if tok.path is not None:
        if not os.path.isfile(tok.path):
            raise ConfigError(f"tokenizer.path {tok.path!r} does not exist; give a SentencePiece .model file or remove the key to train one")
        return
    if tok.vocab_size is None and tok.model_type != "char":
        raise ConfigError(f"tokenizer.vocab_size is required for a {tok.model_type} model (e.g. 8192)")
    if tok.vocab_size is not None and tok.vocab_size < 8:
        raise ConfigError(f"tokenizer.vocab_size must be >= 8, got {tok.vocab_size}")
    if tok.unk_id < 0 or tok.eos_id < 0:
        raise ConfigError("tokenizer.unk_id and tokenizer.eos_id must be >= 0: SentencePiece needs unk, records end with EOS")
    if tok.add_bos and tok.bos_id < 0:
        raise ConfigError("tokenizer.add_bos is true but tokenizer.bos_id is -1; give BOS an id or set add_bos=false")
    ids = {k: getattr(tok, k) for k in ("pad_id", "unk_id", "bos_id", "eos_id") if getattr(tok, k) >= 0}
    if len(set(ids.values())) != len(ids):
        raise ConfigError(f"tokenizer special ids must differ, got {ids}")
    if not 0 < tok.character_coverage <= 1:
        raise ConfigError(f"tokenizer.character_coverage must be in (0, 1], got {tok.character_coverage}")
    if tok.input_sentence_size < 0 or tok.max_sentence_length < 16 or tok.num_threads < 1:
        raise ConfigError("tokenizer.input_sentence_size must be >= 0, max_sentence_length >= 16, num_threads >= 1")
    if any(not s for s in tok.user_defined_symbols):
        raise ConfigError("tokenizer.user_defined_symbols must not contain empty strings")
