"""Run set-up: what a run builds before its first step, in one place.

`build(config)` makes the mesh (checked against the batch and pipeline first), the model spec, the
objective, the scheme (the state's layout and step: schemes.Standard, or diloco.DiLoCo), the
shardings and the compiled train and eval steps (`open_data` and `make_loader`: its data); nothing is computed until the state is made
(`init()`) or restored into `abstract()`. The loop (loop.py), DiLoCo, the tests and the benchmarks
all start here; `compile_for_analysis` compiles the real step without running it (the planner).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Union

import jax
import numpy as np
import optax
import yaml
from jax.sharding import Mesh, NamedSharding

from jaxlm.config import PAIR_OBJECTIVES, REFERENCE_OBJECTIVES, Config, ConfigError
from jaxlm.data import format as data_format
from jaxlm.data.global_batch import to_global
from jaxlm.data.loader import build_loader, open_dataset
from jaxlm.data.pairs import build_pair_loader, has_reference
from jaxlm.parallel import fit, rules
from jaxlm.parallel.mesh import BATCH_AXES, build_mesh
from jaxlm.train import diloco, objective as objective_lib
from jaxlm.train import pair_objectives  # noqa: F401  (registers train.objective: reward, dpo, ipo, simpo)
from jaxlm.train import policy_gradient  # noqa: F401  (registers train.objective: policy_gradient)
from jaxlm.train.objective import Objective
from jaxlm.train.schemes import Standard
from jaxlm.train.state import ModelSpec, model_spec
from jaxlm.train.step import make_eval_step


@dataclasses.dataclass
class Setup:
    config: Config
    mesh: Mesh
    spec: ModelSpec
    objective: Objective
    scheme: Union[Standard, diloco.DiLoCo]
    batch_sharding: NamedSharding  # a step's batch: (n_micro, rows, length), rows over the batch axes
    micro_sharding: NamedSharding  # one micro-batch: (rows, length)
    train_step: Callable  # compiled (state, batch) -> (state, metrics); the state is donated
    eval_step: Callable  # compiled (params, micro-batch) -> objective.Sums

    @property
    def shardings(self) -> dict:
        return self.scheme.shardings

    def init(self) -> dict:
        """A fresh state, created in its shards."""
        return self.scheme.init()

    def abstract(self) -> dict:
        """The state as ShapeDtypeStructs with shardings: what a checkpoint restores into."""
        return self.scheme.abstract()

    def field_dtype(self, name: str) -> np.dtype:
        """A batch field's dtype: int32, or float32 for the objective's float fields."""
        return np.dtype(np.float32 if name in self.objective.float_fields else np.int32)

    def batch(self, local: dict, leading: int = 1) -> dict[str, jax.Array]:
        """This process's rows {field: (n_micro, rows, length)} (leading=0: one micro-batch) ->
        global arrays on the mesh, rows over the batch axes. Fields the objective reads that
        `local` lacks are added later (a reference model's log-probabilities, jaxlm.train.reference)."""
        fields = {k: np.asarray(local[k], self.field_dtype(k)) for k in self.objective.batch_fields if k in local}
        return to_global(fields, self.mesh, BATCH_AXES, leading=leading)

    @staticmethod
    def own_rows(rows: np.ndarray, n_micro: int) -> np.ndarray:
        """(n_micro * micro rows, ...) rows every process holds alike (an RL rollout is made the same
        everywhere) -> this process's share of every micro-batch, (n_micro, micro rows / processes, ...):
        what `batch` takes."""
        per_micro = rows.reshape(n_micro, -1, *rows.shape[1:])
        local = per_micro.shape[1] // jax.process_count()
        start = jax.process_index() * local
        return per_micro[:, start:start + local]


def build(config: Config, *, mesh: Optional[Mesh] = None, devices=None,
          optimizer: Optional[optax.GradientTransformation] = None,
          objective: Optional[Objective] = None) -> Setup:
    """Everything but the state. mesh: given (checked to fit), else built from config over
    `devices` (default all); optimizer/objective: default the config's (tests pass their own)."""
    objective = objective or objective_lib.build(config)  # an unknown name fails first
    if mesh is None:
        mesh = build_mesh(config, devices)  # checks the fit (`mesh: auto` is resolved before)
    else:
        fit.check_fits(config, dict(mesh.shape), jax.process_count())
    spec = model_spec(config)
    if config.diloco.enabled:
        scheme = diloco.DiLoCo(config, spec, mesh, optimizer, objective)
    else:
        scheme = Standard(config, spec, mesh, optimizer, objective)
    batch_sharding = rules.batch_sharding(mesh, ndim=2, leading=1)
    micro_sharding = rules.batch_sharding(mesh, ndim=2)
    eval_step = jax.jit(rules.sharded_activations(make_eval_step(config, spec, mesh, objective), mesh),
                        in_shardings=(scheme.shardings["params"],
                                      {k: micro_sharding for k in objective.batch_fields}))
    return Setup(config, mesh, spec, objective, scheme, batch_sharding, micro_sharding,
                 scheme.jit(scheme.step, batch_sharding), eval_step)


def open_data(config: Config) -> list:
    """Each data source's dataset info, checked against the model (vocab) before any compute."""
    infos = []
    for i, source in enumerate(config.data.sources):
        try:
            info = open_dataset(source.path, expected_vocab_size=config.model.vocab_size)
        except data_format.DataFormatError as e:
            hint = (f" (this run's data comes from `python -m data_prep --config {config.data.prepare}`)"
                    if _prepares(config.data.prepare, source.path) else "")
            raise ConfigError(f"data.sources[{i}]: {e}{hint}") from None
        _check_record_kind(config, i, info)
        infos.append(info)
    return infos


def _check_record_kind(config: Config, i: int, info) -> None:
    """Pair objectives read pair datasets and nothing else; cached reference log-probabilities
    must be in the records."""
    objective = config.train.objective
    where = f"data.sources[{i}] ({info.path})"
    if objective in PAIR_OBJECTIVES and info.record_kind != "pair":
        raise ConfigError(f"{where} holds {info.record_kind!r} records, but train.objective={objective} trains on "
                          "preference pairs: prepare them with a data_prep hh_rlhf, pairs or alpaca_eval source")
    if objective not in PAIR_OBJECTIVES and info.record_kind == "pair":
        raise ConfigError(f"{where} holds preference pairs; train them with train.objective reward, dpo, ipo or simpo")
    if (objective in REFERENCE_OBJECTIVES and config.preference.reference == "cached"
            and not has_reference(info.manifest)):
        raise ConfigError(f"{where} stores no reference log-probabilities (preference.reference=cached): write them "
                          "with `python -m jaxlm.eval --workdir REF --pairs DIR --reference-logps OUT`, or use "
                          "preference.reference=model")
    cached_len = (info.manifest.get("reference") or {}).get("seq_len")
    if objective in REFERENCE_OBJECTIVES and config.preference.reference == "cached" and cached_len != config.data.seq_len:
        raise ConfigError(f"{where}: its reference log-probabilities were computed on sequences cut at {cached_len} "
                          f"tokens, this run cuts them at data.seq_len={config.data.seq_len}; set data.seq_len={cached_len} "
                          "or write them again with the run's length (jaxlm.eval --context)")


def make_loader(config: Config, split: str, *, epochs: Optional[int] = None):
    """This process's loader of `split` micro-batches: (rows, length) arrays of every field."""
    c = config
    rows = c.train.micro_batch // jax.process_count()
    if c.train.objective in PAIR_OBJECTIVES:  # preference pairs: chosen and rejected rows side by side
        return build_pair_loader(
            sources=[(s.path, s.weight) for s in c.data.sources], split=split, seq_len=c.data.seq_len,
            batch_rows=rows, seed=c.seed, process_index=jax.process_index(), process_count=jax.process_count(),
            num_epochs=epochs, shuffle=split == "train", worker_count=c.data.worker_count if split == "train" else 0,
            prefetch=c.data.prefetch, model_vocab_size=c.model.vocab_size)
    return build_loader(
        sources=[(s.path, s.weight) for s in c.data.sources], split=split,
        seq_len=c.data.seq_len, batch_rows=rows, seed=c.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_epochs=epochs, shuffle=split == "train",
        worker_count=c.data.worker_count if split == "train" else 0,
        prefetch=c.data.prefetch, model_vocab_size=c.model.vocab_size,
        shuffle_rows=c.data.shuffle_rows if split == "train" else 0)


def compile_for_analysis(config: Config, n_micro: int = 1):
    """Lowers and compiles the real train step on the current devices without running it; the
    planner compares its memory estimate with the result's `memory_analysis()`."""
    s = build(config)
    rows = config.train.micro_batch
    batch = {k: jax.ShapeDtypeStruct((n_micro, rows, config.data.seq_len), s.field_dtype(k))
             for k in s.objective.batch_fields}
    return s.train_step.lower(s.abstract(), batch).compile()


def _prepares(prepare_config: str, path: str) -> bool:
    """Whether the data_prep config `data.prepare` names writes `path` (its `output`): a source
    overridden to another folder must not be told to run that config."""
    if not prepare_config:
        return False
    try:
        with open(prepare_config, encoding="utf-8") as f:
            output = yaml.safe_load(f)["output"]
        return os.path.abspath(str(output)) == os.path.abspath(path)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False
