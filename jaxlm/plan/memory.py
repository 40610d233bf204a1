"""Per-device memory of a training step, its FLOPs, time and cost, and a mesh for a device count.

The model is described by `jaxlm.config.ModelConfig` (the trainer's own), so the planner and the
trainer cannot disagree on what a config means. Parameters and FLOPs are counted from the model
itself (`jaxlm.model.counting`: an abstract evaluation of `Transformer`'s shapes with their logical
axis names; the trainer's MFU uses the same FLOPs count), and each parameter is sharded with the
trainer's own rule table (`jaxlm.parallel.rules`), so the per-device parameter bytes are exact.

Activations are an estimate: elements saved per token and layer for each rematerialisation policy,
grouped by the dim they scale with (residual `embed`, query `heads`, `kv`, `mlp`, attention scores).
The counts were measured on XLA's compiled train step (jaxlm.train.step) by differencing models of
different depth and width; see docs/planning.md. The step's peak is

    params + optimizer state                      (arguments; outputs alias them: donated)
  + float32 gradient accumulator (micro-batching) + compute-dtype weights
  + layers x saved activations per layer
  + max(the loss's logits and their gradient, the micro-batch's float32 gradients + one layer's
        backward working set)

because the loss's (tokens, vocab) buffers are freed before the first layer's backward starts.
What the compiler does differs by platform (`Workload.platform`): the TPU terms were read off XLA's
TPU compiler's buffer assignments for real recipes and slices (docs/tpu.md), the CPU ones measured
on XLA's CPU backend (docs/planning.md).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Optional

from jaxlm.config import ModelConfig
from jaxlm.model import counting
from jaxlm.model.attention import SPLASH_LANES
from jaxlm.model.counting import ParamShape
from jaxlm.parallel.rules import PARAM_RULES, spec_for
from jaxlm.plan import PlanError

GiB = 2**30

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_MOMENTS = {"adamw": 2, "lion": 1, "adafactor": 0}  # param-sized float32 buffers; adafactor
# keeps only row and column statistics (negligible here)

# Elements saved per token per layer, by policy: {dim: count}. "scores" are attention logits
# (float32) plus probabilities (compute dtype) per query head and key position.
SAVED_PER_LAYER = {
    "none": {"embed": 3, "heads": 3, "kv": 6, "mlp": 6, "scores": 1},
    # the weight matmuls' outputs (named in the model, see layers.Dense): q, k, v, o, (gate,) up, down
    "dots": {"embed": 2, "heads": 1, "kv": 2, "mlp": None, "scores": 0},  # mlp: 2 gated, 1 plain
    "full": {"embed": 1, "heads": 0, "kv": 0, "mlp": 0, "scores": 0},  # the layer's input only
}
REMAT_POLICIES = tuple(SAVED_PER_LAYER)
TPU_LANES = 128  # TPU tiles an array 8 x 128: its minor dim is stored in multiples of 128 elements
# Under tensor parallelism the row-parallel matmuls (o, down) leave partial sums that are reduced
# into fresh residual-sized buffers, and the column-parallel inputs are kept whole.
TENSOR_PARALLEL_EXTRA_EMBED = 4


@dataclasses.dataclass(frozen=True)
class MeshShape:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    pipe: int = 1

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor * self.pipe

    @property
    def batch_shards(self) -> int:  # the batch dim is split over data and fsdp
        return self.data * self.fsdp

    def __str__(self) -> str:
        return f"data={self.data},fsdp={self.fsdp},tensor={self.tensor},pipe={self.pipe}"


def parse_mesh(text: str) -> MeshShape:
    """'data=8,fsdp=4' -> MeshShape(data=8, fsdp=4, tensor=1, pipe=1)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor", "pipe") or not value.strip().isdigit() or int(value) < 1:
            raise PlanError(f"mesh {text!r}: {part!r} must be data|fsdp|tensor|pipe=<positive int>, "
                            "e.g. --mesh data=8,fsdp=4,tensor=1")
        sizes[key] = int(value)
    return MeshShape(**sizes)


# ----------------------------------------------------------------------------------------------
# Parameters, as jaxlm.model.Transformer creates them


def dims(model) -> dict:
    n = model.n_heads
    return dict(d=model.d_model, f=model.d_ff, n=n, kv=model.n_kv_heads,
                h=model.head_dim, V=model.vocab_size, L=model.n_layers)


def param_table(model) -> tuple[ParamShape, ...]:
    """(name, shape, logical axes) of every parameter, read off the model itself (jaxlm.model.counting)."""
    return counting.param_table(model)


count_params = counting.param_count


def _shard_factor(shape: tuple, axes: tuple, mesh: MeshShape) -> int:
    """How many ways the trainer's rules split this parameter (pipe splits the `layers` dim)."""
    fake_mesh = types.SimpleNamespace(shape=dict(data=mesh.data, fsdp=mesh.fsdp, tensor=mesh.tensor))
    spec = spec_for(axes, shape, fake_mesh, PARAM_RULES)
    sizes = fake_mesh.shape
    factor = 1
    for entry in spec:
        for axis in (entry,) if isinstance(entry, str) else (entry or ()):
            factor *= sizes[axis]
    if mesh.pipe > 1 and axes and axes[0] == "layers":
        factor *= mesh.pipe
    return factor


def params_per_device(model, mesh: MeshShape) -> tuple[float, float]:
    """(all parameters, per-layer parameters) held by one device."""
    total = layers = 0.0
    for _, shape, axes in param_table(model):
        share = math.prod(shape) / _shard_factor(shape, axes, mesh)
        total += share
        if axes[0] == "layers":
            layers += share
    return total, layers


# ----------------------------------------------------------------------------------------------
# FLOPs


flops_per_token = counting.flops_per_token  # the trainer's MFU uses the same count


# ----------------------------------------------------------------------------------------------
# Memory


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one optimizer step processes."""

    global_batch: int  # sequences per step
    seq_len: int
    micro_batch: Optional[int] = None  # sequences per micro-batch; None: the whole batch at once
    remat: str = "none"  # none | dots | full
    compute_dtype: str = "bfloat16"
    param_dtype: str = "float32"
    optimizer: str = "adamw"
    loss_chunk: int = 0  # >0: cross-entropy over this many tokens at a time
    platform: str = "tpu"  # tpu | gpu | cpu (XLA's CPU backend keeps bf16 activations as float32)
    pipeline_repeats: int = 1  # the circular schedule's rounds (pipeline.repeats); 1: GPipe
    pipeline_microbatches: int = 0  # micro-batches per pipeline pass (pipeline.microbatches); 0: all

    @classmethod
    def of(cls, config) -> "Workload":
        """What one optimizer step of a jaxlm Config processes."""
        m, t, p = config.model, config.train, config.pipeline
        return cls(global_batch=t.global_batch, seq_len=config.data.seq_len, micro_batch=t.micro_batch,
                   remat=m.remat, compute_dtype=m.dtype, param_dtype=m.param_dtype, optimizer=config.optim.name,
                   loss_chunk=m.loss_chunk, pipeline_microbatches=p.microbatches,
                   pipeline_repeats=p.repeats if p.schedule == "circular" else 1)

    def __post_init__(self):  # the derived default, resolved once (as jaxlm.config.TrainConfig does)
        if not self.micro_batch:
            object.__setattr__(self, "micro_batch", self.global_batch)

    @property
    def n_micro(self) -> int:
        return self.global_batch // self.micro_batch


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. The step holds the first five terms throughout (the state is donated: its
    outputs alias it); on top of them the peak comes either in the loss or in the backward pass
    through the layers, whichever needs more."""

    params: float
    optimizer: float
    accumulator: float  # float32 gradient accumulator (micro-batching), held across micro-batches
    weights_compute: float  # compute-dtype copies of the weights (and, remat none on CPU, their gradients)
    activations: float  # saved for the backward pass, all layers on this device
    micro_grads: float  # the micro-batch's float32 gradients
    loss: float  # the loss's working set: (tokens or a chunk, vocab) logits and their gradient
    layer: float  # one layer's backward working set (what it recomputes, and its gradients)
    grads_during_loss: bool = False  # XLA's CPU schedule allocates the gradients before the loss runs;
    # TPU's builds them in the backward pass, after the loss's buffers are freed

    @property
    def grads(self) -> float:
        return self.accumulator + self.micro_grads

    @property
    def at_loss(self) -> float:  # on top of the held terms while the loss runs
        return self.loss + (self.micro_grads if self.grads_during_loss else 0.0)

    @property
    def in_backward(self) -> float:  # on top of the held terms in the backward pass through a layer
        return self.micro_grads + self.layer

    @property
    def logits_dominate(self) -> bool:  # the loss's (tokens, vocab) buffers set the peak
        return self.at_loss > self.in_backward

    @property
    def total(self) -> float:
        return (self.params + self.optimizer + self.accumulator + self.weights_compute + self.activations
                + max(self.at_loss, self.in_backward))

    @property
    def state(self) -> float:  # what XLA reports as argument bytes (the donated train state)
        return self.params + self.optimizer

    @property
    def temp(self) -> float:  # what XLA reports as temp bytes
        return self.total - self.state

    def rows(self) -> list[tuple[str, float]]:
        peak = " (the peak)"
        return [("parameters", self.params), ("optimizer state", self.optimizer),
                ("gradient accumulator", self.accumulator), ("compute-dtype weights", self.weights_compute),
                ("saved activations", self.activations),
                ("then, in the loss: logits and their gradient" + (peak if self.logits_dominate else ""), self.at_loss),
                ("or, in the backward pass: gradients + one layer's working set"
                 + ("" if self.logits_dominate else peak), self.in_backward),
                ("total", self.total)]


def _dtype_bytes(name: str) -> int:
    if name not in _DTYPE_BYTES:
        raise PlanError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


def check_mesh(model, work: Workload, mesh: MeshShape) -> None:
    """Raises PlanError when the trainer could not run this model on this mesh."""
    g = dims(model)
    micro = work.micro_batch
    if work.global_batch % micro:
        raise PlanError(f"global batch {work.global_batch} is not a multiple of the micro-batch {micro}")
    if micro % mesh.batch_shards:
        raise PlanError(f"mesh {mesh} splits the batch {mesh.batch_shards} ways (data x fsdp) but a "
                        f"micro-batch has {micro} sequences; make data*fsdp divide it")
    if mesh.pipe > 1 and g["L"] % mesh.pipe:
        raise PlanError(f"mesh {mesh}: pipe={mesh.pipe} does not divide the {g['L']} layers")
    if mesh.tensor > 1 and (g["n"] % mesh.tensor or g["f"] % mesh.tensor):
        raise PlanError(f"mesh {mesh}: tensor={mesh.tensor} must divide the {g['n']} heads and the "
                        f"MLP width {g['f']} to be of use; pick a divisor of both")
    if work.remat not in SAVED_PER_LAYER:
        raise PlanError(f"unknown remat policy {work.remat!r}; use one of {', '.join(REMAT_POLICIES)}")
    if work.optimizer not in OPTIMIZER_MOMENTS:
        raise PlanError(f"unknown optimizer {work.optimizer!r}; use one of {', '.join(OPTIMIZER_MOMENTS)}")


def flash_attention(model, work: Workload) -> bool:
    """Whether attention runs a kernel that never materialises the (T, S) scores: the splash kernel
    on TPU (under `jaxlm.model.attention.use_splash`'s conditions), cuDNN's fused attention on GPU.
    XLA's CPU backend runs the plain einsums, which keep scores and probabilities."""
    if work.platform == "cpu" or model.attention == "dense" or model.attn_dropout > 0:
        return False
    return work.platform == "gpu" or model.attention == "splash" or work.seq_len % SPLASH_LANES == 0


def _per_token_layer_bytes(model, policy: str, mesh: MeshShape, act_bytes: int, work: Workload) -> float:
    g = dims(model)
    t = mesh.tensor

    def split(size: int, ways_divide: bool) -> float:  # tensor-parallel activations
        return size / t if t > 1 and ways_divide else size

    counts = dict(SAVED_PER_LAYER[policy])
    if t > 1 and policy == "none":
        counts["embed"] += TENSOR_PARALLEL_EXTRA_EMBED
    if counts["mlp"] is None:
        counts["mlp"] = 1 if model.family == "gpt2" else 2
    if flash_attention(model, work):
        counts["scores"] = 0
    # TPU keeps the key and value projections (B, T, kv heads, head_dim) with head_dim as the
    # 128-lane minor dim, so a head_dim under 128 is padded to it (64 -> 128 doubles them). Queries
    # too when every head has its own kv head (the same shape, laid out alike); with grouped kv heads
    # XLA lays the queries out for the splash kernel's grouped form, tokens minor, unpadded.
    kv_dim = _lanes(g["h"], work.platform)
    q_dim = kv_dim if g["kv"] == g["n"] else g["h"]
    heads_split = g["n"] % t == 0
    per_token = (counts["embed"] * g["d"]
                 + counts["heads"] * split(g["n"] * q_dim, heads_split)
                 + counts["kv"] * split(g["kv"] * kv_dim, g["kv"] % t == 0)
                 + counts["mlp"] * split(g["f"], g["f"] % t == 0)) * act_bytes
    per_token += counts["scores"] * split(g["n"] * work.seq_len, heads_split) * (4 + act_bytes)
    return per_token


def _lanes(size: int, platform: str) -> int:
    """A minor dim as stored: TPU tiles arrays 128 elements wide in their minor dim."""
    return -(-size // TPU_LANES) * TPU_LANES if platform == "tpu" else size


def estimate_memory(model, work: Workload, mesh: MeshShape) -> MemoryEstimate:
    """Per-device bytes of one train step of `model` (a jaxlm ModelConfig) on `mesh`."""
    check_mesh(model, work, mesh)
    g = dims(model)
    pbytes = _dtype_bytes(work.param_dtype)
    cbytes = _dtype_bytes(work.compute_dtype)
    cpu = work.platform == "cpu"
    act_bytes = 4 if cpu else cbytes
    p_dev, p_layers_dev = params_per_device(model, mesh)
    mixed = cbytes != pbytes

    params = p_dev * pbytes
    optimizer = p_dev * 4 * OPTIMIZER_MOMENTS[work.optimizer]
    accumulator = p_dev * 4 if work.n_micro > 1 else 0.0
    micro_grads = p_dev * 4
    if cpu:  # measured on XLA's CPU backend: the layers' weights and their gradients, remat none only
        weights_compute = p_layers_dev * 2 * cbytes if (mixed and work.remat == "none") else 0.0
    else:
        # XLA hoists the casts of the weights to the compute dtype out of the layer scan and the
        # micro-batch loop: one compute-dtype copy of this device's share of every weight, held
        # through the step (under FSDP the shards are cast before they are gathered).
        weights_compute = p_dev * cbytes if mixed else 0.0

    tokens = work.micro_batch // mesh.batch_shards * work.seq_len
    layers_here = g["L"] // mesh.pipe
    saved = _per_token_layer_bytes(model, work.remat, mesh, act_bytes, work)
    activations = layers_here * tokens * saved
    if mesh.pipe > 1:
        # Every iteration of the schedule saves its stage's activations for the backward pass
        # (R*M + S - 1 iterations of L/(S*R) layers), and the stage outputs wait for their next
        # stage in an (M, tokens, d_model) buffer, kept with its gradient.
        m = work.pipeline_microbatches or work.n_micro
        iterations = work.pipeline_repeats * m + mesh.pipe - 1
        activations = iterations * layers_here // work.pipeline_repeats * tokens * saved
        activations += 2 * m * tokens * g["d"] * act_bytes
    if work.remat == "none":
        layer = tokens * saved
    else:  # the backward pass recomputes the layer's forward: its activations as remat none keeps them
        layer = tokens * _per_token_layer_bytes(model, "none", mesh, act_bytes, work)
    if mesh.pipe > 1 and not cpu:
        # TPU: the backward pass of a schedule iteration copies the stage's saved activations for
        # all its L/(S*R) layers out of the schedule's stack at once, beside the layer it works on
        layer += (layers_here // work.pipeline_repeats - 1) * tokens * saved

    vocab_here = g["V"] / mesh.tensor if g["V"] % mesh.tensor == 0 else g["V"]
    # float32 logits, float32 softmax/gradient, and the gradient cast to the compute dtype (which
    # XLA's CPU backend, as for activations, keeps in float32)
    logit_bytes = 8 + (act_bytes if cbytes != 4 else 0)
    unembed = g["d"] * vocab_here
    chunked = 0 < work.loss_chunk < work.micro_batch * work.seq_len
    if chunked and not cpu:
        # The fused loss walks the micro-batch's tokens chunk by chunk, and each device computes
        # every chunk's (chunk, vocab) logits whole: under data parallelism or FSDP the chunk loop
        # runs over the whole batch's tokens, its hidden states resharded so that each device
        # contracts its share of d_model, and the partial logits are summed across devices (an
        # all-reduce). Live together: the float32 logits, their gradient in the compute dtype,
        # the float32 weight-gradient accumulator (sharded as the unembedding is) and the float32
        # gradient of this device's hidden states.
        unembed_here = unembed / (mesh.fsdp if g["d"] % mesh.fsdp == 0 else 1)
        loss = (work.loss_chunk * vocab_here * (4 + cbytes) + unembed_here * 4 + tokens * g["d"] * 4)
    elif chunked:
        # one chunk's logits; the fused loss's float32 weight-gradient accumulator, the copy it
        # saves for the backward pass, and compute-dtype casts of the weight and its gradient;
        # float32 gradient of the hidden states
        loss = (work.loss_chunk * vocab_here * logit_bytes + unembed * (8 + 2 * cbytes)
                + tokens * g["d"] * 8)
    else:
        loss = tokens * vocab_here * logit_bytes
    if mesh.pipe > 1:
        # the loss runs over the pass's micro-batches, split over the stages when S divides M,
        # each micro-batch's buffers kept for the backward pass
        m = work.pipeline_microbatches or work.n_micro
        loss *= m // mesh.pipe if m % mesh.pipe == 0 else m
    if mesh.fsdp > 1 and (cpu or not chunked):  # the unembedding gathered whole, its gradient made whole
        loss += unembed * (cbytes + 4)
    return MemoryEstimate(params, optimizer, accumulator, weights_compute, activations, micro_grads, loss, layer,
                          grads_during_loss=cpu)


# ----------------------------------------------------------------------------------------------
# Time, money, and a mesh for a device count


@dataclasses.dataclass(frozen=True)
class TimeEstimate:
    flops: float
    device_hours: float
    wall_hours: float
    cost: Optional[float]  # in the price's currency


def estimate_time(total_flops: float, devices: int, peak_flops: float, mfu: float,
                  price_per_device_hour: Optional[float] = None) -> TimeEstimate:
    if total_flops <= 0 or devices <= 0:
        raise PlanError(f"FLOPs and devices must be positive, got {total_flops:g} and {devices}")
    if not 0 < mfu <= 1:
        raise PlanError(f"MFU is a fraction in (0, 1], got {mfu} (e.g. 0.4 for 40%)")
    device_hours = total_flops / (peak_flops * mfu) / 3600.0
    cost = None if price_per_device_hour is None else device_hours * price_per_device_hour
    return TimeEstimate(total_flops, device_hours, device_hours / devices, cost)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def candidate_meshes(model, work: Workload, devices: int, max_tensor: int = 8) -> list[MeshShape]:
    """Every mesh of `devices` devices the trainer can run this model on (pipe kept at 1)."""
    out = []
    for tensor in _divisors(devices):
        if tensor > max_tensor:
            continue
        for fsdp in _divisors(devices // tensor):
            mesh = MeshShape(data=devices // tensor // fsdp, fsdp=fsdp, tensor=tensor)
            try:
                check_mesh(model, work, mesh)
            except PlanError:
                continue
            out.append(mesh)
    return out


def recommend_mesh(model, work: Workload, devices: int, hbm_bytes: float,
                   headroom: float = 0.9, max_tensor: int = 8) -> tuple[MeshShape, MemoryEstimate]:
    """The mesh with the least model parallelism whose estimate fits in `headroom` x HBM.

    Preference, cheapest communication first: pure data parallelism; then FSDP (one all-gather
    and one reduce-scatter of the weights per step, overlappable); tensor parallelism last (an
    all-reduce inside every layer, needs fast links: keep it within a host, <= max_tensor).
    """
    if devices <= 0:
        raise PlanError(f"the device count must be positive, got {devices}")
    meshes = candidate_meshes(model, work, devices, max_tensor)
    if not meshes:
        micro = work.micro_batch
        raise PlanError(f"no mesh of {devices} devices can split a micro-batch of {micro} sequences "
                        "and this model's heads; use a batch that is a multiple of the device count")
    fitting = [(m, estimate_memory(model, work, m)) for m in meshes]
    fitting = [(m, e) for m, e in fitting if e.total <= headroom * hbm_bytes]
    if not fitting:
        best = min(meshes, key=lambda m: estimate_memory(model, work, m).total)
        need = estimate_memory(model, work, best).total
        raise PlanError(f"does not fit: the best mesh ({best}) needs {need / GiB:.1f} GiB per device of "
                        f"{hbm_bytes / GiB:.0f} GiB; use more devices, remat=full, a smaller micro-batch "
                        "or loss chunking")
    return min(fitting, key=lambda me: (me[0].tensor, me[0].fsdp))


# ----------------------------------------------------------------------------------------------
# Well-known shapes, as jaxlm ModelConfig fields

PRESETS: dict[str, dict] = {
    "gpt2-124m": dict(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "gpt2-350m": dict(family="gpt2", vocab_size=50257, d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024),
    "gpt2-774m": dict(family="gpt2", vocab_size=50257, d_model=1280, n_layers=36, n_heads=20, max_seq_len=1024),
    "gpt2-1.5b": dict(family="gpt2", vocab_size=50257, d_model=1600, n_layers=48, n_heads=25, max_seq_len=1024),
    "llama-1b": dict(family="llama", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                     d_ff=8192, max_seq_len=8192),
    "llama-7b": dict(family="llama", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                     max_seq_len=4096, tie_embeddings=False),
    "llama-8b": dict(family="llama", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                     d_ff=14336, max_seq_len=8192, tie_embeddings=False),
    "llama-70b": dict(family="llama", vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                      d_ff=28672, max_seq_len=8192, tie_embeddings=False),
}


def preset(name: str, **overrides):
    """A jaxlm ModelConfig of a well-known shape (`gpt2-124m`, `llama-8b`, ...)."""
    if name not in PRESETS:
        raise PlanError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
