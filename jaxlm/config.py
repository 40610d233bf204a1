"""The typed config tree: YAML in, validated dataclasses out, resolved YAML back to the workdir.

Every field has a type and a default; `load_config` rejects unknown keys (naming the closest valid
one) and wrong types before any compute. Overrides are `key.path=value` strings whose value is
parsed as YAML (`optim.lr=3e-4`, `mesh.data=2`, `data.sources=[{path: d, weight: 1}]`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A config the user wrote cannot work; the message names the key and the fix."""


@dataclasses.dataclass
class ModelConfig:
    family: str = "llama"  # gpt2: LayerNorm, learned positions, GELU, biases | llama: RMSNorm, RoPE, SwiGLU, GQA
    vocab_size: int = 32000
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: as many as n_heads (no grouping)
    head_dim: Optional[int] = None  # None: d_model // n_heads
    d_ff: Optional[int] = None  # None: 4*d_model (gpt2), or 8/3*d_model rounded up to 64 (llama)
    max_seq_len: int = 1024
    tie_embeddings: bool = True
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init: str = "gpt2"  # normal | gpt2 (residual projections / sqrt(2L)) | small (T-Fixup-like, for deep stacks)
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype
    param_dtype: str = "float32"
    # Operand dtype of the layers' weight matmuls (accumulation is float32); None: dtype. On a CPU
    # with AMX, float32 activations with bfloat16 matmuls are the fast pair (docs/benchmarks.md).
    matmul_dtype: Optional[str] = None
    scan_layers: bool = True
    # Rematerialisation of each layer in the backward pass: none | full (keep only the layer input)
    # | dots (keep matmul outputs, recompute the elementwise rest). `dots` is the default: nearly
    # the memory of `full`'s recompute-heavy cousin at the speed of `none`, and on CPU it is
    # faster than `none` (measured 1.5x on the Tiny Shakespeare step: fewer saved residuals to move).
    remat: str = "dots"
    loss_chunk: int = 0  # >0: cross-entropy over this many tokens at a time, never holding all logits
    # Attention kernel: auto (splash on TPU, cuDNN's fused call on GPU, plain XLA elsewhere) | dense
    # (never a kernel: the full masked logits) | splash (the Pallas TPU kernel, interpreted off TPU).
    attention: str = "auto"


@dataclasses.dataclass
class SourceConfig:
    path: str = ""  # a data_prep output folder
    weight: float = 1.0


@dataclasses.dataclass
class DataConfig:
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    seq_len: int = 256
    worker_count: int = 0  # Grain worker processes (0: read in the training process)
    prefetch: int = 2
    shuffle_rows: int = 1024  # train rows are shuffled within windows this large (0: off)
    prepare: str = ""  # data_prep config that makes the sources, named in error messages


@dataclasses.dataclass
class MeshConfig:
    data: int = -1  # -1: whatever the other axes leave of the device count
    fsdp: int = 1
    tensor: int = 1
    pipe: int = 1
    auto: bool = False  # `mesh: auto`: sizes chosen from devices, model and batch (jaxlm.parallel.auto)
    dcn_axis: str = "data"  # several TPU slices: the axis that spans them (over the data-centre network)


@dataclasses.dataclass
class PipelineConfig:
    """Used when mesh.pipe > 1 (docs/parallelism.md)."""
    schedule: str = "gpipe"  # gpipe | circular (each device holds `repeats` stages: a smaller bubble)
    microbatches: int = 0  # micro-batches per pipeline pass; 0: all of the step's (train.micro_batch)
    repeats: int = 1  # circular: times a micro-batch goes round the devices (gpipe: 1)


@dataclasses.dataclass
class DiLoCoConfig:
    """Local SGD: replicas along mesh.data take `inner_steps` optimizer steps apart, then average."""
    enabled: bool = False
    inner_steps: int = 50  # H: steps between synchronisations
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True


@dataclasses.dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | cosine | linear | step | inverse_sqrt | wsd
    warmup_steps: int = 0
    decay_steps: Optional[int] = None  # None: train.steps
    min_lr_ratio: float = 0.1  # floor of cosine/linear/wsd as a fraction of the peak
    step_every: int = 1000  # step decay: multiply by step_factor every step_every steps
    step_factor: float = 0.1
    wsd_decay_fraction: float = 0.2  # warmup-stable-decay: last fraction of steps decays


@dataclasses.dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adafactor | lion
    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; masked off norms, biases and (1-D) gains
    clip_norm: float = 1.0  # global gradient norm clip; 0 disables
    l1: float = 0.0  # explicit penalties added to the loss (rarely wanted beside weight decay)
    l2: float = 0.0
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)


@dataclasses.dataclass
class RampStage:
    until_tokens: int = 0  # this batch size is used while fewer tokens than this have been seen
    batch: int = 0  # sequences per optimizer step; a multiple of train.micro_batch


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    global_batch: int = 8  # sequences per optimizer step
    micro_batch: Optional[int] = None  # sequences per micro-batch (gradient accumulation); None: global_batch
    batch_ramp: list[RampStage] = dataclasses.field(default_factory=list)
    z_loss: float = 0.0  # weight of log(Z)^2, keeps the softmax normaliser near 1
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 20
    sample_every: int = 0  # 0: no samples during training
    eval_tasks: list[str] = dataclasses.field(default_factory=list)  # n-shot tasks (names or task YAML files)
    eval_tasks_every: int = 0  # run them every this many steps (0: never)
    eval_tasks_limit: int = 200  # items per task, so the hook stays a small fraction of training time
    eval_tasks_shots: int = 0
    eval_tasks_data: str = ""  # folder holding the tasks' data files (e.g. ../shared/data/eval)
    peak_flops: Optional[float] = None  # per device, for MFU; None: table for TPU/GPU, a matmul probe on CPU


@dataclasses.dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "jaxlm"
    mode: str = "offline"  # offline works without the network; `wandb sync` uploads later


@dataclasses.dataclass
class LogConfig:
    tensorboard: bool = True
    progress: bool = True
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class SpikesConfig:
    """Loss-spike handling (docs/loss_spikes.md): skip flagged steps in the step, roll back when flags persist."""
    enabled: bool = True  # flag and skip anomalous steps inside the compiled step
    warmup_steps: int = 100  # clean steps seen before any z-score decision (NaN/Inf always flag)
    ema_decay: float = 0.99  # running mean/variance of loss and log(grad_norm); horizon ~1/(1-decay) steps
    loss_z: float = 6.0  # flag a step whose loss is this many spreads above the running mean
    grad_z: float = 8.0  # same for log(grad_norm) before clipping (heavier-tailed than the loss)
    loss_spread_floor: float = 0.01  # the loss spread is taken as at least this fraction of its mean
    grad_spread_floor: float = 0.1  # spread of log(grad_norm) at least this (a ~10% change)
    rollback: bool = True  # restore a checkpoint from before the onset when flags persist
    window: int = 20  # w: roll back when max_flags of the last `window` steps were flagged
    max_flags: int = 5  # k
    sustain_z: float = 3.0  # ... or when the loss z-score stays above this
    sustain_steps: int = 50  # ... for this many consecutive steps (0: off)
    skip_margin: int = 10  # steps of data skipped beyond the spike, on top of those from the checkpoint to it
    lr_factor: float = 0.5  # lr_scale after a rollback (1: unchanged) ...
    lr_steps: int = 200  # ... for this many steps, then back to 1
    max_rollbacks: int = 3  # R: one more persistent spike stops the run


@dataclasses.dataclass
class FaultConfig:
    """One injected fault, for tests and drills (docs/loss_spikes.md)."""
    kind: str = "lr"  # lr: multiply the learning rate by `factor` | garbage: random tokens | nan: NaN gradients
    step: int = 0  # first step it hits
    steps: int = 1  # consecutive steps it lasts
    factor: float = 100.0  # learning-rate multiplier (kind lr)
    persistent: bool = False  # hit again every time training passes `step` after a rollback


@dataclasses.dataclass
class CheckpointConfig:
    """Orbax checkpoints in <workdir>/checkpoints (docs/checkpointing.md); a run with checkpoints resumes by itself."""
    enabled: bool = True
    every_steps: int = 1000  # save when step % every_steps == 0 (0: not by step count)
    every_minutes: float = 30.0  # ... and when this long has passed since the last save (0: not by time)
    keep_last: int = 3  # the newest K checkpoints are kept ...
    keep_every_steps: int = 0  # ... and, for good, those at multiples of M steps (0: none)
    async_save: bool = True  # write in the background while training goes on
    restore_from: str = ""  # a workdir (or its checkpoints/<step>) to start from while this workdir has none
    agree_every_steps: int = 10  # several processes: how often they agree on time/signal-triggered saves
    handle_signals: bool = True  # SIGTERM/SIGINT: save, then exit with 128+signum (docs/checkpointing.md)


@dataclasses.dataclass
class Config:
    workdir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    diloco: DiLoCoConfig = dataclasses.field(default_factory=DiLoCoConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    spikes: SpikesConfig = dataclasses.field(default_factory=SpikesConfig)
    faults: list[FaultConfig] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Building the tree from plain data


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(sorted(options))}"


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}{_closest(str(key), fields)}")
        kwargs[key] = _convert(hints[key], value, path)
    return cls(**kwargs)


def _convert(hint, value, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if hint is MeshConfig and value == "auto":
        value = {"auto": True}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e6 in YAML
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path} must be of type {hint.__name__}, got {value!r} ({type(value).__name__})")


def set_path(tree: dict, dotted: str, value) -> None:
    """tree['a']['b'] = value for 'a.b', creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
        pairs.append((key.strip(), value))
    return pairs


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    raw = dict(raw or {})
    for key, value in parse_overrides(list(overrides)):
        set_path(raw, key, value)
    config = _build(Config, raw, "")
    validate(config)
    return config


def load_config(path: str, overrides: list[str] = ()) -> Config:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (see configs/ for recipes)")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Checks that need more than one field. Checks against devices and data live where those are known.

_CHOICES = {
    "model.family": ("gpt2", "llama"),
    "model.init": ("normal", "gpt2", "small"),
    "model.remat": ("none", "full", "dots"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.matmul_dtype": (None, "float32", "bfloat16", "float16"),
    "model.attention": ("auto", "dense", "splash"),
    "optim.name": ("adamw", "adafactor", "lion"),
    "optim.schedule.name": ("constant", "cosine", "linear", "step", "inverse_sqrt", "wsd"),
    "log.wandb.mode": ("offline", "online", "disabled"),
    "pipeline.schedule": ("gpipe", "circular"),
    "mesh.dcn_axis": ("data", "fsdp", "tensor", "pipe"),
}


def _get(config, dotted: str):
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


def validate(config: Config) -> None:
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(f"{key} is {value!r}; choose one of {', '.join(map(str, choices))}")
    m, t = config.model, config.train
    for key in ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.max_seq_len",
                "data.seq_len", "train.steps", "train.global_batch", "train.log_every"):
        if _get(config, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_get(config, key)}")
    if m.head_dim is None and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}), "
                          "or set model.head_dim")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        raise ConfigError(f"model.n_heads ({m.n_heads}) must be a multiple of model.n_kv_heads ({kv})")
    if m.family == "gpt2" and config.data.seq_len > m.max_seq_len:
        raise ConfigError(f"data.seq_len ({config.data.seq_len}) exceeds model.max_seq_len ({m.max_seq_len}), "
                          "the size of the learned position table; raise model.max_seq_len")
    micro = t.micro_batch or t.global_batch
    for batch, key in [(t.global_batch, "train.global_batch")] + [
        (s.batch, f"train.batch_ramp[{i}].batch") for i, s in enumerate(t.batch_ramp)
    ]:
        if batch % micro:
            raise ConfigError(f"{key} ({batch}) must be a multiple of train.micro_batch ({micro})")
    for i, s in enumerate(t.batch_ramp):
        if s.batch <= 0 or s.until_tokens <= 0:
            raise ConfigError(f"train.batch_ramp[{i}] needs positive batch and until_tokens")
    for name in ("embed_dropout", "attn_dropout", "resid_dropout"):
        if not 0.0 <= getattr(m, name) < 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(m, name)}")
    if not config.data.sources:
        raise ConfigError("data.sources is empty: name at least one prepared dataset folder "
                          "(made by `python -m data_prep --config data_prep/configs/<recipe>.yaml`)")
    for i, s in enumerate(config.data.sources):
        if s.weight <= 0:
            raise ConfigError(f"data.sources[{i}].weight must be positive, got {s.weight}")
    _validate_spikes_and_faults(config)
    _validate_parallel(config)
    _validate_checkpoint(config)


def _validate_spikes_and_faults(config: Config) -> None:
    sp = config.spikes
    for key in ("warmup_steps", "window", "max_flags", "sustain_steps", "skip_margin", "lr_steps", "max_rollbacks"):
        if getattr(sp, key) < 0:
            raise ConfigError(f"spikes.{key} must be >= 0, got {getattr(sp, key)}")
    for key in ("loss_z", "grad_z", "sustain_z"):
        if getattr(sp, key) <= 0:
            raise ConfigError(f"spikes.{key} must be positive, got {getattr(sp, key)}")
    if not 0.0 < sp.ema_decay < 1.0:
        raise ConfigError(f"spikes.ema_decay must be in (0, 1), got {sp.ema_decay}")
    if sp.loss_spread_floor <= 0 or sp.grad_spread_floor <= 0:
        raise ConfigError("spikes.loss_spread_floor and spikes.grad_spread_floor must be positive "
                          "(a zero spread would flag the first rounding difference)")
    if not 0.0 < sp.lr_factor <= 1.0:
        raise ConfigError(f"spikes.lr_factor must be in (0, 1], got {sp.lr_factor}")
    if sp.max_flags > sp.window:
        raise ConfigError(f"spikes.max_flags ({sp.max_flags}) cannot exceed spikes.window ({sp.window})")
    if sp.enabled and sp.rollback and config.checkpoint.enabled and config.checkpoint.keep_last < 2:
        raise ConfigError("spikes.rollback needs checkpoint.keep_last >= 2: the newest checkpoint may hold the "
                          "update that caused a spike, and rolling back needs the one before it")
    for i, f in enumerate(config.faults):
        if f.kind not in ("lr", "garbage", "nan"):
            raise ConfigError(f"faults[{i}].kind is {f.kind!r}; choose one of lr, garbage, nan")
        if f.step < 0 or f.steps < 1:
            raise ConfigError(f"faults[{i}] needs step >= 0 and steps >= 1, got step={f.step}, steps={f.steps}")
        if f.kind == "lr" and f.factor <= 0:
            raise ConfigError(f"faults[{i}].factor must be positive, got {f.factor}")


def _validate_checkpoint(config: Config) -> None:
    ck = config.checkpoint
    for key in ("every_steps", "every_minutes", "keep_every_steps"):
        if getattr(ck, key) < 0:
            raise ConfigError(f"checkpoint.{key} must be >= 0 (0 turns it off), got {getattr(ck, key)}")
    if ck.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be at least 1, got {ck.keep_last}")
    if ck.agree_every_steps < 1:
        raise ConfigError(f"checkpoint.agree_every_steps must be at least 1, got {ck.agree_every_steps}")


def _validate_parallel(config: Config) -> None:
    """Checks of the pipeline and DiLoCo sections alone; those against the mesh live in jaxlm.parallel."""
    p, d = config.pipeline, config.diloco
    if p.microbatches < 0:
        raise ConfigError(f"pipeline.microbatches must be >= 0 (0: all of the step's), got {p.microbatches}")
    if p.schedule == "gpipe" and p.repeats != 1:
        raise ConfigError(f"pipeline.repeats ({p.repeats}) > 1 needs pipeline.schedule=circular")
    if p.schedule == "circular" and p.repeats < 2:
        raise ConfigError(f"pipeline.schedule=circular needs pipeline.repeats >= 2, got {p.repeats}")
    if d.inner_steps < 1:
        raise ConfigError(f"diloco.inner_steps must be at least 1, got {d.inner_steps}")
    if d.outer_lr <= 0 or not 0.0 <= d.outer_momentum < 1.0:
        raise ConfigError(f"diloco needs outer_lr > 0 and 0 <= outer_momentum < 1, got "
                          f"{d.outer_lr} and {d.outer_momentum}")
