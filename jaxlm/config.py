"""The typed config tree: YAML in, validated dataclasses out, resolved YAML back to the workdir.

Every field has a type and a default; `load_config` rejects unknown keys (naming the closest valid
key, dotted) and wrong types before any compute, naming the override or the file that caused it
(jaxlm.schema builds the tree). Overrides are `key.path=value` strings whose value is parsed as
YAML (`optim.lr=3e-4`, `mesh.data=2`, `data.sources=[{path: d, weight: 1}]`). Derived defaults
(`model.head_dim`, `model.n_kv_heads`, `model.d_ff`, `model.matmul_dtype`, `train.micro_batch`) are
resolved when a section is built, so config.yaml shows the values the run used. Whether a run
has data is the trainer's question (`require_data`), not the schema's: eval, export and restore
build configs without sources.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Optional

import yaml

from jaxlm import schema
from jaxlm.schema import ConfigError  # noqa: F401  (every jaxlm module raises it from here)


LORA_TARGETS = ("q", "k", "v", "o", "up", "gate", "down")  # the Dense layers' names in jaxlm.model


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters on the named Dense layers: y = x W + (alpha / rank) * dropout(x) A B, with A
    random and B zero at the start (so the model starts as the base). rank 0 = no adapters."""
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input, in training only
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q", "v"])  # of LORA_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


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
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    # A scalar head (embed,) on the final hidden state: a reward model's score of a sequence, read at
    # its last token (train.objective: reward). Saved in checkpoints with the other parameters.
    reward_head: bool = False
    # A value head (embed,) + bias on the final hidden state: PPO's critic, a scalar per token
    # (rl.algorithm: ppo). Starts at zero; saved in checkpoints with the other parameters.
    value_head: bool = False

    def __post_init__(self):
        """Derived defaults, resolved here once: every reader (model, planner, export, metrics) and
        the workdir's config.yaml see the same numbers. Left None when they cannot be derived
        (validate() then names the fields to fix)."""
        if not self.n_kv_heads:
            self.n_kv_heads = self.n_heads
        if not self.head_dim and self.n_heads > 0 and self.d_model % self.n_heads == 0:
            self.head_dim = self.d_model // self.n_heads
        if not self.d_ff:
            self.d_ff = default_d_ff(self.family, self.d_model)
        if self.matmul_dtype is None:
            self.matmul_dtype = self.dtype


def default_d_ff(family: str, d_model: int) -> int:
    if family == "gpt2":
        return 4 * d_model
    return -(-int(8 * d_model / 3) // 64) * 64  # SwiGLU keeps the MLP's parameter count near 8d^2


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
    auto: bool = False  # `mesh: auto`: sizes chosen from devices, model and batch (jaxlm.plan.auto)
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
    name: str = "adamw"  # adamw | adafactor | lion | muon | schedule_free_adamw
    lr: float = 3e-4  # peak rate (muon: of its AdamW part, the embeddings, norms and biases)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; masked off norms, biases and (1-D) gains
    clip_norm: float = 1.0  # global gradient norm clip; 0 disables
    l1: float = 0.0  # explicit penalties added to the loss (rarely wanted beside weight decay)
    l2: float = 0.0
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    # Muon (hidden matrices; Keller Jordan's published defaults): peak rate, Nesterov momentum,
    # Newton-Schulz steps. The shape scale sqrt(max(1, fan_out/fan_in)) is optax's.
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    ns_steps: int = 5


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
    objective: str = "next_token"  # the loss the run optimises (jaxlm.train.objective)
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

    def __post_init__(self):  # the derived default, resolved once (see ModelConfig)
        if not self.micro_batch:
            self.micro_batch = self.global_batch


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
class InitConfig:
    """Where a fresh run's parameters start (warm start; a run with checkpoints resumes instead).
    The optimizer, step and schedule start fresh; token rows the run's vocabulary adds (chat
    tokens) start at the mean of the trained rows; LoRA adapters start as LoRA starts them."""
    from_: str = ""  # YAML key `from`: a jaxlm workdir (its newest checkpoint that restores)
    hf: str = ""  # a transformers folder (jaxlm.export's, or a llama/gpt2 checkpoint)


@dataclasses.dataclass
class PreferenceConfig:
    """The pair objectives (train.objective: reward | dpo | ipo | simpo; docs/preference_tuning.md).
    Their data is a pair dataset (data_prep's hh_rlhf, pairs or alpaca_eval sources); a micro-batch
    holds chosen and rejected rows one after the other, so train.global_batch and micro_batch
    count sequences: 16 is 8 pairs."""
    beta: float = 0.1  # dpo: scale of the implicit reward beta * (log pi - log ref); ipo: tau; simpo: its scale (2.0 typical)
    label_smoothing: float = 0.0  # dpo: the share of labels assumed flipped (conservative DPO), in [0, 0.5)
    gamma: float = 0.5  # simpo: the target reward margin
    ipo_average: bool = True  # ipo: per-token average log-probabilities (as TRL) rather than sums (as the paper)
    rpo_alpha: float = 0.0  # dpo/ipo/simpo: weight of the chosen response's mean per-token NLL added to the loss (RPO)
    margin: float = 0.0  # reward: Bradley-Terry margin, loss = -log sigmoid(s_chosen - s_rejected - margin)
    # dpo/ipo: where the reference log-probabilities come from. model: the frozen init.from / init.hf
    # model, computed before every step; cached: stored in the pair records (jaxlm.eval --reference-logps)
    reference: str = "model"


@dataclasses.dataclass
class RLRewardConfig:
    """Where a rollout's reward comes from, exactly one of: a Python verifier "module:function"
    (response text, reference answer) -> reward (jaxlm.eval.verifiers: final_number, the shipped
    task's), or a trained reward model (the workdir of a train.objective: reward run), whose score
    of prompt + response is the reward (jaxlm.rl.rewards)."""
    verifier: str = ""  # e.g. "jaxlm.eval.verifiers:final_number"
    model: str = ""  # e.g. runs/reward_arith


@dataclasses.dataclass
class RLConfig:
    """Online RL (train.objective: policy_gradient; jaxlm.rl, docs/online_rl.md). data.sources[0] is
    the instruction dataset whose tokenizer and chat template the prompts are written with (its
    records are not read). Each step samples train.global_batch / group_size prompts, generates group_size responses to each with the policy
    (KV cache, seeded from the step), scores them, and takes one clipped policy-gradient step with a
    KL penalty to the frozen reference (the init.from model)."""
    algorithm: str = ""  # grpo | rloo | ppo ("" = no RL)
    prompts: str = ""  # JSONL/JSON items {instruction (or question), answer}: data_prep.arithmetic's train.jsonl
    group_size: int = 8  # G: responses per prompt
    reward: RLRewardConfig = dataclasses.field(default_factory=RLRewardConfig)
    kl_coef: float = 0.04  # beta: weight of the per-token KL estimate in the loss
    kl_estimator: str = "k3"  # k1 | k3 (jaxlm.train.advantages)
    clip: float = 0.2  # PPO's epsilon: the ratio to the sampling policy is clipped to [1-eps, 1+eps]
    scale_advantages: bool = True  # grpo: divide by the group's std (false: Dr. GRPO's mean-centring alone)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eval_prompts: str = ""  # held-out items: greedy answers' mean rl.reward (final_number: exact match) every eval_every steps
    eval_every: int = 0
    eval_limit: int = 200  # items of eval_prompts used
    # ppo only (model.value_head: true): the KL penalty goes into the per-token reward, then GAE
    gamma: float = 1.0  # discount over response tokens
    lam: float = 0.95  # GAE's lambda
    vf_coef: float = 0.1  # weight of the value loss beside the policy loss
    value_clip: float = 0.2  # new values are clipped to old_values +- value_clip in the value loss


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
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    preference: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)


# ----------------------------------------------------------------------------------------------
# Building the tree from plain data (jaxlm.schema does the typing; this names the cause)


def set_path(tree: dict, dotted: str, value) -> None:
    """tree['a']['b'] = value for 'a.b', checked against the Config schema (unknown keys fail)."""
    schema.set_override(tree, Config, dotted, value)


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "") -> Config:
    """A validated Config from plain data and `key.path=value` overrides; a ConfigError names the
    override that caused it, else `source` (the config file), when given."""
    raw = copy.deepcopy(dict(raw or {}))
    origins = {}
    try:
        origins = schema.apply_overrides(raw, Config, list(overrides))
        if raw.get("mesh") == "auto":
            raw["mesh"] = {"auto": True}
        config = schema.build(Config, raw, root=Config)
        validate(config)
    except ConfigError as e:
        override = schema.cause(e, origins)
        if override:
            where = f"override {override!r}"
        elif source and overrides and not e.key:  # a check across keys: the file and the overrides
            where = f"{source} with {' '.join(overrides)}"
        else:
            where = source
        if not where:
            raise
        raise ConfigError(f"{where}: {e}", e.key, override) from None
    return config


def load_config(path: str, overrides: list[str] = ()) -> Config:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (see configs/ for recipes)")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    return config_from_dict(raw, overrides, source=path)


def to_dict(config) -> dict:
    return schema.to_plain(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def require_data(config: Config) -> None:
    """A training run reads data; evaluation, restore and export need none. The trainer calls
    this before any compute."""
    if not config.data.sources:
        raise ConfigError("data.sources is empty: name at least one prepared dataset folder "
                          "(made by `python -m data_prep --config data_prep/configs/<recipe>.yaml`)")


# ----------------------------------------------------------------------------------------------
# Checks that need more than one field. Checks against devices and data live where those are known.

_CHOICES = {
    "model.family": ("gpt2", "llama"),
    "model.init": ("normal", "gpt2", "small"),
    "model.remat": ("none", "full", "dots"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.matmul_dtype": (None, "float32", "bfloat16", "float16"),
    "optim.name": ("adamw", "adafactor", "lion", "muon", "schedule_free_adamw"),
    "model.attention": ("auto", "dense", "splash"),
    "optim.schedule.name": ("constant", "cosine", "linear", "step", "inverse_sqrt", "wsd"),
    "log.wandb.mode": ("offline", "online", "disabled"),
    "pipeline.schedule": ("gpipe", "circular"),
    "mesh.dcn_axis": ("data", "fsdp", "tensor", "pipe"),
    "preference.reference": ("model", "cached"),
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
    if m.head_dim is None:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads}), "
                          "or set model.head_dim")
    if m.n_kv_heads <= 0 or m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_heads ({m.n_heads}) must be a multiple of model.n_kv_heads ({m.n_kv_heads})")
    if m.family == "gpt2" and config.data.seq_len > m.max_seq_len:
        raise ConfigError(f"data.seq_len ({config.data.seq_len}) exceeds model.max_seq_len ({m.max_seq_len}), "
                          "the size of the learned position table; raise model.max_seq_len")
    micro = t.micro_batch
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
    for i, s in enumerate(config.data.sources):
        if s.weight <= 0:
            raise ConfigError(f"data.sources[{i}].weight must be positive, got {s.weight}")
    o = config.optim
    if o.name == "muon" and (o.muon_lr <= 0 or o.ns_steps < 1 or not 0.0 <= o.muon_momentum < 1.0):
        raise ConfigError(f"optim: muon needs muon_lr > 0, ns_steps >= 1 and 0 <= muon_momentum < 1, "
                          f"got {o.muon_lr}, {o.ns_steps}, {o.muon_momentum}")
    if o.name == "schedule_free_adamw" and not 0.0 < o.b1 < 1.0:
        raise ConfigError(f"optim.b1 must be in (0, 1) for schedule_free_adamw (its averaging weight), got {o.b1}")
    if o.name == "schedule_free_adamw" and config.diloco.enabled:
        raise ConfigError("optim.name=schedule_free_adamw cannot run under diloco.enabled: DiLoCo averages the "
                          "replicas' trained points, not schedule-free's evaluation average; use adamw")
    if config.init.from_ and config.init.hf:
        raise ConfigError("init.from and init.hf both set: start from a jaxlm workdir or a transformers folder, not both")
    if (config.init.from_ or config.init.hf) and config.diloco.enabled:
        raise ConfigError("init.from / init.hf cannot start a diloco.enabled run yet; start it from a checkpoint "
                          "with checkpoint.restore_from, or train the warm start without DiLoCo")
    _validate_lora(m)
    _validate_spikes_and_faults(config)
    _validate_parallel(config)
    _validate_checkpoint(config)
    _validate_preference(config)
    _validate_rl(config)


def _validate_lora(m: ModelConfig) -> None:
    lo = m.lora
    if lo.rank < 0:
        raise ConfigError(f"model.lora.rank must be >= 0 (0: no adapters), got {lo.rank}")
    if lo.rank == 0:
        return
    if lo.alpha <= 0:
        raise ConfigError(f"model.lora.alpha must be positive, got {lo.alpha}")
    if not 0.0 <= lo.dropout < 1.0:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {lo.dropout}")
    names = LORA_TARGETS if m.family == "llama" else tuple(t for t in LORA_TARGETS if t != "gate")
    bad = [t for t in lo.targets if t not in names]
    if bad or not lo.targets or len(set(lo.targets)) != len(lo.targets):
        raise ConfigError(f"model.lora.targets is {lo.targets}; list distinct layers out of {', '.join(names)} "
                          f"(the {m.family} model's Dense layers)")


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


PAIR_OBJECTIVES = ("reward", "dpo", "ipo", "simpo")  # objectives over preference pairs (jaxlm.train.pair_objectives)
REFERENCE_OBJECTIVES = ("dpo", "ipo")  # ... those that need a reference model's log-probabilities


def _validate_preference(config: Config) -> None:
    p, t = config.preference, config.train
    if p.beta <= 0:
        raise ConfigError(f"preference.beta must be positive, got {p.beta}")
    if p.rpo_alpha < 0:
        raise ConfigError(f"preference.rpo_alpha must be >= 0 (0: plain DPO), got {p.rpo_alpha}")
    if not 0.0 <= p.label_smoothing < 0.5:
        raise ConfigError(f"preference.label_smoothing must be in [0, 0.5), got {p.label_smoothing}")
    if t.objective not in PAIR_OBJECTIVES:
        return
    if config.diloco.enabled:
        raise ConfigError(f"train.objective={t.objective} cannot run under diloco.enabled yet; train it without DiLoCo")
    if t.micro_batch % 2:
        raise ConfigError(f"train.micro_batch ({t.micro_batch}) must be even for train.objective={t.objective}: "
                          "it counts sequences, a chosen and a rejected one per pair")
    if t.objective == "reward" and not config.model.reward_head:
        raise ConfigError("train.objective=reward trains the scalar head: set model.reward_head=true")
    if (t.objective in REFERENCE_OBJECTIVES and p.reference == "model"
            and not (config.init.from_ or config.init.hf)):
        raise ConfigError(f"train.objective={t.objective} with preference.reference=model compares the policy with "
                          "the model it starts from: set init.from (a workdir) or init.hf, or use "
                          "preference.reference=cached with pairs that carry reference log-probabilities")


def _validate_rl(config: Config) -> None:
    r, t = config.rl, config.train
    rl_objective = t.objective == "policy_gradient"
    if not r.algorithm and not rl_objective:
        return
    if not rl_objective:
        raise ConfigError(f"rl.algorithm={r.algorithm} trains with train.objective=policy_gradient, not {t.objective!r}")
    if r.algorithm not in ("grpo", "rloo", "ppo"):
        raise ConfigError(f"rl.algorithm is {r.algorithm!r}; choose grpo or rloo (group-relative, no critic) "
                          "or ppo (a value head and GAE); train.objective=policy_gradient")
    if r.kl_estimator not in ("k1", "k3"):
        raise ConfigError(f"rl.kl_estimator is {r.kl_estimator!r}; choose k1 or k3")
    if not r.prompts:
        raise ConfigError("rl.prompts is empty: name a JSONL file of {instruction, answer} items "
                          "(python -m data_prep.arithmetic --out data/arithmetic writes data/arithmetic/train.jsonl)")
    if bool(r.reward.verifier) == bool(r.reward.model):
        raise ConfigError(f"rl.reward needs exactly one of verifier (a Python \"module:function\", e.g. "
                          f"jaxlm.eval.verifiers:final_number) and model (a reward model's workdir, e.g. "
                          f"runs/reward_arith); got verifier={r.reward.verifier!r}, model={r.reward.model!r}")
    if not config.init.from_:
        raise ConfigError("online RL starts from a trained model and keeps it as the frozen reference: set init.from "
                          "(a jaxlm workdir, e.g. runs/arith_sft)")
    least = 1 if r.algorithm == "ppo" else 2  # ppo's baseline is the value head, not the group
    if r.group_size < least or t.global_batch % r.group_size:
        raise ConfigError(f"rl.group_size ({r.group_size}) must be at least {least} and divide train.global_batch "
                          f"({t.global_batch}): each step trains on global_batch / group_size prompts x group_size responses")
    if r.max_new_tokens <= 0 or r.temperature < 0 or r.top_k < 0 or not 0.0 < r.top_p <= 1.0:
        raise ConfigError(f"rl needs max_new_tokens > 0, temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got "
                          f"{r.max_new_tokens}, {r.temperature}, {r.top_k}, {r.top_p}")
    if r.kl_coef < 0 or r.clip <= 0 or r.eval_every < 0 or r.eval_limit <= 0:
        raise ConfigError(f"rl needs kl_coef >= 0, clip > 0, eval_every >= 0 and eval_limit > 0, got "
                          f"{r.kl_coef}, {r.clip}, {r.eval_every}, {r.eval_limit}")
    if r.algorithm == "ppo" and not config.model.value_head:
        raise ConfigError("rl.algorithm=ppo trains a value head beside the policy: set model.value_head=true")
    if r.algorithm != "ppo" and config.model.value_head:
        raise ConfigError(f"model.value_head=true is PPO's critic; rl.algorithm={r.algorithm} does not train it: "
                          "set model.value_head=false")
    if not (0.0 <= r.gamma <= 1.0 and 0.0 <= r.lam <= 1.0) or r.vf_coef < 0 or r.value_clip <= 0:
        raise ConfigError(f"rl needs gamma and lam in [0, 1], vf_coef >= 0 and value_clip > 0, got "
                          f"{r.gamma}, {r.lam}, {r.vf_coef}, {r.value_clip}")
    if r.eval_every and not r.eval_prompts:
        raise ConfigError("rl.eval_every is set but rl.eval_prompts is empty: name the held-out items (e.g. "
                          "data/arithmetic/test.jsonl), or set rl.eval_every=0")
    if t.eval_every:
        raise ConfigError("an RL run makes its batches by generation and has no validation loss: set "
                          "train.eval_every=0 (held-out evaluation: rl.eval_prompts, rl.eval_every)")
    if t.batch_ramp or config.diloco.enabled or config.model.lora.rank or config.mesh.pipe > 1:
        raise ConfigError("online RL does not run with train.batch_ramp, diloco, model.lora or mesh.pipe > 1 yet")


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
