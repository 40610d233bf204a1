"""Checkpoints of a run, with Orbax: save in the background, resume from the latest good one.

`<workdir>/checkpoints/<step>/` holds two Orbax items:
    state  the train state {"params", "opt_state", "step", "lr_scale", ...}; every process writes
           the shards it owns. The dropout RNG needs no saving: the step derives it from (seed, step).
    meta   JSON: every process's data-loader state (keyed by process index), the `extra` dict the
           loop passes (spike-detector state), the resolved config, and a checksum of every array.
Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a checkpoint cut
short by a kill is never listed; leftovers are removed before the next save.

Restoring walks from the newest checkpoint back: one whose items are missing, unreadable or whose
arrays do not match their checksums is recorded in incidents.jsonl, moved to
`checkpoints.corrupt/`, and the one before it is tried. Arrays are placed with the restoring run's
shardings, so a checkpoint resumes on another mesh or device count. See docs/checkpointing.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxlm import config as config_lib
from jaxlm.config import Config, ConfigError
from jaxlm.train import resume
from jaxlm.train.incidents import Incidents
from jaxlm.train.preemption import SignalWatcher, processes_agree

CHECKPOINT_DIR = "checkpoints"
_META_VERSION = 1
_META_FILE = "metadata"


class CheckpointError(ConfigError):
    """No usable checkpoint where one was asked for; the message says where and what to do."""


class Restored(NamedTuple):
    state: dict  # the train state, placed with the restoring run's shardings
    loader_state: dict  # {"<process index>": loader state} of every process at save time
    extra: dict  # what the loop passed as `extra` when saving ({} if nothing)
    step: int


class _Unusable(Exception):
    """A checkpoint that cannot be restored (missing, unreadable or corrupt)."""


def abstract_state(config: Config, spec, optimizer, shardings: dict) -> dict:
    """The train state as ShapeDtypeStructs carrying `shardings` (the restore target); nothing is computed."""
    from jaxlm.train.state import init_state
    shapes = jax.eval_shape(lambda: init_state(config, spec, optimizer, shardings))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def _abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def leaves_by_path(tree: Any) -> dict[str, Any]:
    """{"a/b/c": leaf}: a pytree's leaves by their path, the names checkpoints use."""
    return {_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shapes(leaves: dict[str, Any], prefix: str = "") -> dict[str, tuple]:
    """{path without `prefix/`: shape} of the leaves under `prefix` (all when it is empty)."""
    cut = len(prefix) + 1 if prefix else 0
    return {k[cut:]: tuple(x.shape) for k, x in leaves.items() if not prefix or k.startswith(prefix + "/")}


# ----------------------------------------------------------------------------------------------
# Checksums: one exact uint32 sum per array of its bit pattern, word i weighted by 2i+1. An odd
# weight makes any single flipped bit change the sum, and position weights catch misplaced data.
# Integer sums are exact in any order, so the result does not depend on the sharding: a checkpoint
# is verified after restoring onto another mesh too.


def _words(x: jax.Array) -> Optional[jax.Array]:
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}.get(jnp.dtype(x.dtype).itemsize)
    if unsigned is None or not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        return None
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


@jax.jit
def _checksum_tree(tree):
    def one(x):
        w = _words(x)
        if w is None:
            return None
        odd = jnp.arange(w.size, dtype=jnp.uint32) * 2 + 1
        return jnp.sum(w * odd, dtype=jnp.uint32)
    return jax.tree.map(one, tree)


def checksums(tree: Any) -> dict[str, int]:
    """{"params/embed/embedding": checksum, ...}; a collective in multi-process runs."""
    return _fetch_checksums(_checksum_tree(tree))


def _fetch_checksums(pending: Any) -> dict[str, int]:
    return {_path_name(p): int(x) for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(pending))[0]}


class _MetaHandler(ocp.JsonCheckpointHandler):
    """The meta item: JSON that process 0 writes in the background part of the save. Its "checksums"
    arrive as device arrays still being computed and are fetched there, so the training loop never
    waits for them (on a CPU they take a pass over the whole state)."""

    def __init__(self):
        super().__init__(filename=_META_FILE)

    async def async_save(self, directory, item=None, args=None):
        meta = dict(args.item)

        async def write() -> None:
            if jax.process_index() == 0:
                meta["checksums"] = await asyncio.to_thread(_fetch_checksums, meta["checksums"])
                (directory / _META_FILE).write_text(json.dumps(meta))

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="jaxlm_meta_save")]


@ocp.args.register_with_handler(_MetaHandler, for_save=True)
@dataclasses.dataclass
class _MetaSave(ocp.args.CheckpointArgs):
    item: dict


@ocp.args.register_with_handler(_MetaHandler, for_restore=True)
@dataclasses.dataclass
class _MetaRestore(ocp.args.CheckpointArgs):
    item: Optional[bytes] = None  # unused: the meta item is read whole


# ----------------------------------------------------------------------------------------------


def _gather_json(obj: Any) -> list:
    """Every process's JSON-able `obj`, in process order (a collective)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = processes_agree(np.array([data.size]))[:, 0]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    rows = processes_agree(padded.astype(np.int32))
    return [json.loads(bytes(rows[i, : lengths[i]].astype(np.uint8)).decode()) for i in range(len(rows))]


def _all_ok(ok: bool) -> bool:
    return bool(processes_agree(np.array([int(ok)])).min())


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class CheckpointManager:
    """Saves and restores one run's checkpoints. Every method is called by every process.

    save(step, state, loader_state, extra)  starts writing (returns once the arrays are copied off
                                            the devices when async); `wait()` waits for it.
    save_due(step)                          why the loop should save now: "final", "preemption",
                                            "interval", "time", or None (agreed by all processes).
    restore_latest(abstract_state)          the newest checkpoint that restores, or None.
    restore_step(step, abstract_state)      one given checkpoint (rollbacks).
    """

    def __init__(self, workdir: str, config: Config, *, is_main: Optional[bool] = None,
                 incidents: Optional[Incidents] = None, directory: Optional[str] = None, read_only: bool = False):
        self.config = config
        self.options = config.checkpoint
        self.is_main = jax.process_index() == 0 if is_main is None else is_main
        self.read_only = read_only
        self.directory = os.path.abspath(directory or os.path.join(workdir, CHECKPOINT_DIR))
        self.incidents = incidents or Incidents(workdir, enabled=False)
        self._config_dict = config_lib.to_dict(config)
        self._mngr = self._open(self.directory, read_only)
        self._last_save_time = time.monotonic()
        handle = self.options.handle_signals and self.options.enabled and not read_only
        self.signals = SignalWatcher(enabled=handle)

    def _open(self, directory: str, read_only: bool) -> ocp.CheckpointManager:
        o = self.options
        policy = ocp.checkpoint_managers.LatestN(o.keep_last)
        if o.keep_every_steps:
            policy = ocp.checkpoint_managers.AnyPreservationPolicy(
                [policy, ocp.checkpoint_managers.EveryNSteps(o.keep_every_steps)])
        options = ocp.CheckpointManagerOptions(
            read_only=read_only, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=o.async_save, preservation_policy=policy)
        if read_only and not os.path.isdir(directory):
            raise CheckpointError(f"{directory} does not exist: no checkpoints to restore there")
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": _MetaHandler()}
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)

    # ------------------------------------------------------------------------------------------
    # Saving

    def all_steps(self) -> list[int]:
        """Finished checkpoints, oldest first."""
        return sorted(self._mngr.all_steps())

    def save_due(self, step: int) -> Optional[str]:
        """Why to save at `step` (the state after `step` optimizer steps), or None."""
        o = self.options
        if not o.enabled or self.read_only:
            return None
        if step >= self.config.train.steps:
            return "final"
        preempted = self.signals.signum is not None
        time_due = bool(o.every_minutes) and time.monotonic() - self._last_save_time >= 60 * o.every_minutes
        if jax.process_count() > 1:  # agree: any process's signal, process 0's clock
            if step % o.agree_every_steps:
                preempted = time_due = False
            else:
                flags = processes_agree(np.array([int(preempted), int(time_due)]))
                preempted, time_due = bool(flags[:, 0].max()), bool(flags[0, 1])
        if preempted:
            return "preemption"
        if o.every_steps and step % o.every_steps == 0:
            return "interval"
        return "time" if time_due else None

    def save(self, step: int, state: dict, loader_state: dict, extra: Optional[dict] = None,
             reason: str = "interval") -> bool:
        """Starts writing checkpoint `step`; False if it exists already. `loader_state` is this
        process's; `extra` a JSON-able dict (the same on every process)."""
        if step in self._mngr.all_steps():
            return False
        loaders = _gather_json(loader_state)
        meta = {
            "version": _META_VERSION,
            "step": int(step),
            "reason": reason,
            "saved_at": time.time(),
            "process_count": jax.process_count(),
            "loader": {str(i): s for i, s in enumerate(loaders)},
            "extra": extra or {},
            "config": self._config_dict,
            "checksums": _checksum_tree(state),  # dispatched now, fetched by the background write
        }
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=_MetaSave(meta))
        self._mngr.save(step, args=args, force=True)
        if not self.options.async_save:
            self._mngr.wait_until_finished()
        self._last_save_time = time.monotonic()
        return True

    @property
    def preemption_signal(self) -> int:
        """The signal that stopped this run (SIGTERM for a process that only agreed to another's)."""
        return self.signals.signum or signal.SIGTERM

    def wait(self) -> None:
        """Blocks until the background write (if any) is finished and committed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self.signals.close()
        self._mngr.wait_until_finished()
        self._mngr.close()

    # ------------------------------------------------------------------------------------------
    # Restoring

    def restore_latest(self, abstract_state: dict,
                       fresh_opt_state: Optional[Callable[[dict], Any]] = None) -> Optional[Restored]:
        """The newest checkpoint that restores (older ones are tried when it fails), or None.

        abstract_state: ShapeDtypeStructs with shardings (or live arrays) in the train state's structure.
        fresh_opt_state: params -> a new optimizer state, for a resume with another optimizer.
        Raises ConfigError when the config cannot resume from the checkpoints (model shape).
        """
        for step in reversed(self.all_steps()):
            try:
                return self._restore(step, abstract_state, fresh_opt_state)
            except _Unusable as e:
                self._set_aside(step, str(e))
        if self.options.restore_from and not self.read_only:
            return self._restore_from(self.options.restore_from, abstract_state, fresh_opt_state)
        return None

    def _restore_from(self, path: str, abstract_state: dict, fresh_opt_state) -> Restored:
        """checkpoint.restore_from: another run's checkpoint starts this one (read, never changed)."""
        directory, step = resolve_source(path)
        source = CheckpointManager(directory, self.config, is_main=self.is_main, incidents=self.incidents,
                                   directory=directory, read_only=True)
        try:
            if step is not None:
                return source.restore_step(step, abstract_state, fresh_opt_state)
            restored = source.restore_latest(abstract_state, fresh_opt_state)
        finally:
            source.close()
        if restored is None:
            raise CheckpointError(f"checkpoint.restore_from: {directory} holds no checkpoint that restores "
                                  "(see incidents.jsonl); point it at another run or checkpoint")
        return restored

    def restore_step(self, step: int, abstract_state: dict,
                     fresh_opt_state: Optional[Callable[[dict], Any]] = None) -> Restored:
        """Checkpoint `step` exactly (no fallback); CheckpointError if it is absent or unusable."""
        if step not in self._mngr.all_steps():
            raise CheckpointError(f"there is no finished checkpoint of step {step} in {self.directory} "
                                  f"(there are: {self.all_steps()})")
        try:
            return self._restore(step, abstract_state, fresh_opt_state)
        except _Unusable as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be restored: {e}") from None

    def discard_after(self, step: int, reason: str = "rolled_back") -> list[int]:
        """Moves checkpoints newer than `step` to `checkpoints.<reason>/` (after a rollback they belong
        to an abandoned trajectory, and an automatic resume must not pick them)."""
        later = [s for s in self.all_steps() if s > step]
        self.wait()
        for s in later:
            self._set_aside(s, f"newer than step {step} after a {reason}", folder=reason, kind="checkpoint_discarded")
        return later

    def read_meta(self, step: int) -> dict:
        try:
            meta = self._mngr.restore(step, args=ocp.args.Composite(meta=_MetaRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - any failure to read means the checkpoint is unusable
            raise _Unusable(f"its meta item cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
        if not isinstance(meta, dict) or meta.get("version") != _META_VERSION or "checksums" not in meta:
            raise _Unusable("its meta item is not a jaxlm checkpoint description")
        return meta

    def _saved_arrays(self, step: int) -> dict[str, Any]:
        """{path: Orbax array metadata (shape, dtype)} of the state item."""
        try:
            tree = self._mngr.item_metadata(step)["state"].tree
        except Exception as e:  # noqa: BLE001
            raise _Unusable(f"its state item has no readable metadata ({type(e).__name__}: {str(e)[:300]})") from None
        return leaves_by_path(tree)

    def _restore(self, step: int, target: dict, fresh_opt_state) -> Restored:
        where = f"{self.directory}/{step}"
        problem, meta, saved = None, None, None
        try:
            meta = self.read_meta(step)
            saved = self._saved_arrays(step)
        except _Unusable as e:
            problem = str(e)
        if not _all_ok(problem is None):
            raise _Unusable(problem or "another process could not read it")

        target = _abstract_like(target)
        saved_config = meta["config"]
        wanted = leaves_by_path(target)
        resume.check_model_fits(saved_config, self._config_dict, _shapes(saved, "params"),
                                _shapes(wanted, "params"), where)
        reset_optimizer = "opt_state" in target and (
            saved_config.get("optim", {}).get("name") != self.config.optim.name
            or _shapes(saved, "opt_state") != _shapes(wanted, "opt_state"))
        if reset_optimizer:
            if fresh_opt_state is None:
                raise ConfigError(f"the checkpoint {where} holds another optimizer's state "
                                  f"({saved_config.get('optim', {}).get('name')!r}, now {self.config.optim.name!r})")
            target = {k: v for k, v in target.items() if k != "opt_state"}

        problem = None
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
            state = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                target, restore_args=restore_args, partial_restore=True)))["state"]
            self._verify(state, meta["checksums"], saved)
        except _Unusable as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - truncated files, missing items, tensorstore errors...
            problem = f"its arrays cannot be read ({type(e).__name__}: {str(e)[:300]})"
        if not _all_ok(problem is None):
            raise _Unusable(problem or "another process could not read its part")

        if reset_optimizer:
            state["opt_state"] = _continue_counts(fresh_opt_state(state["params"]), step)
            self.incidents.record(
                "optimizer_reset", step, saved=saved_config.get("optim", {}).get("name"), now=self.config.optim.name,
                note="new optimizer state: zero moments, step counters at the resumed step (the schedule continues)")
            logging.warning("resuming step %d with a fresh %s optimizer state (the checkpoint's does not fit)",
                            step, self.config.optim.name)
        changes = [(k, a, b) for k, a, b in resume.config_changes(saved_config, self._config_dict)
                   if k != "workdir" and not k.startswith("checkpoint.")]
        if changes:
            self.incidents.record("config_changed", step,
                                  changes=[{"key": k, "saved": a, "now": b} for k, a, b in changes])
        self.incidents.record("restore", step, directory=where, reason=meta.get("reason"))
        return Restored(state, meta.get("loader", {}), meta.get("extra", {}), int(step))

    def _verify(self, state: dict, expected: dict, saved: dict) -> None:
        restored = leaves_by_path(state)
        for name, sums in checksums(state).items():
            if name not in expected:
                raise _Unusable(f"{name} has no checksum in its meta item")
            cast = jnp.dtype(saved[name].dtype) != restored[name].dtype  # e.g. param_dtype changed on resume
            if sums != expected[name] and not cast:
                raise _Unusable(f"the data of {name} does not match the checksum written with it")

    def _set_aside(self, step: int, why: str, folder: str = "corrupt", kind: str = "checkpoint_corrupt") -> None:
        """Records the incident and moves the step out of the way (kept, not deleted)."""
        destination = f"{self.directory}.{folder}/{step}"
        self.incidents.record(kind, step, directory=f"{self.directory}/{step}",
                              moved_to=None if self.read_only else destination, why=why)
        logging.warning("checkpoint %d in %s set aside (%s): %s", step, self.directory, folder, why)
        if self.is_main and not self.read_only:
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            if os.path.exists(destination):
                destination = f"{destination}-{int(time.time())}"
            shutil.move(f"{self.directory}/{step}", destination)
        _barrier(f"jaxlm_set_aside_{step}")
        self._mngr.reload()


def _continue_counts(opt_state: Any, step: int) -> Any:
    """Sets the integer step counters of a fresh optax state to `step`, so the learning-rate
    schedule (which reads them) continues instead of restarting."""
    def fix(x):
        if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.integer):
            return jax.device_put(jnp.asarray(step, x.dtype), x.sharding)
        return x
    return jax.tree.map(fix, opt_state)


def resolve_source(path: str) -> tuple[str, Optional[int]]:
    """A workdir, its checkpoints/ folder, or one checkpoints/<step> -> (checkpoints folder, step or None)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        return os.path.join(path, CHECKPOINT_DIR), None
    if os.path.basename(path).isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(os.path.basename(path))
    if os.path.isdir(path):
        return path, None
    raise CheckpointError(f"{path} does not exist; give a run's workdir, its {CHECKPOINT_DIR}/ folder, "
                          f"or one {CHECKPOINT_DIR}/<step> folder")


def restore_params(workdir: str, step: Optional[int] = None, mesh=None) -> tuple[Config, dict]:
    """(config, params) of the newest checkpoint in `workdir` that restores (or of `step`), for
    evaluation and sampling: no optimizer state is read. The parameters are placed on `mesh`, by
    default all of this process's devices with the config's logical rules (replicated unless the
    mesh has fsdp/tensor axes). `workdir` may also be a checkpoints/ folder or checkpoints/<step>.
    Schedule-free runs give their averaged (evaluation) parameters, read with the optimizer state.
    """
    from jaxlm.parallel import rules
    from jaxlm.parallel.mesh import build_mesh
    from jaxlm.train.optimizer import eval_params
    from jaxlm.train.state import build_optimizer, model_spec, state_shardings

    directory, only = resolve_source(workdir)
    step = only if step is None else step
    probe = CheckpointManager(directory, _bare_config(), directory=directory, read_only=True)
    steps = probe.all_steps()
    candidates = [step] if step is not None else list(reversed(steps))
    if not candidates or (step is not None and step not in steps):
        probe.close()
        raise CheckpointError(f"no finished checkpoint{'' if step is None else f' of step {step}'} in {directory} "
                              f"(there are: {steps}); train first, or point at a workdir that has one")
    problems = []
    for s in candidates:
        try:
            config = config_lib.config_from_dict(probe.read_meta(s)["config"])
            spec = model_spec(config)
            if mesh is None:
                mesh = build_mesh(config_lib.MeshConfig(data=-1), jax.local_devices())
            shardings = rules.param_shardings(spec.axes, spec.shapes, mesh)
            target = {"params": jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                             spec.shapes, shardings)}
            averaged = config.optim.name == "schedule_free_adamw"  # its evaluation point needs the state
            if averaged:
                optimizer = build_optimizer(config, spec)
                target["opt_state"] = jax.tree.map(
                    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                    jax.eval_shape(optimizer.init, spec.shapes), state_shardings(spec, optimizer, mesh)["opt_state"])
            reader = CheckpointManager(directory, config, directory=directory, read_only=True)
            try:
                state = reader.restore_step(s, target).state
            finally:
                reader.close()
            params = eval_params(config.optim, state["params"], state["opt_state"]) if averaged else state["params"]
            probe.close()
            return config, params
        except (_Unusable, CheckpointError, ConfigError) as e:
            problems.append(f"step {s}: {e}")
            logging.warning("checkpoint %d in %s skipped: %s", s, directory, e)
    probe.close()
    raise CheckpointError(f"no checkpoint in {directory} restores: " + "; ".join(problems))


def _bare_config() -> Config:
    """A config only for reading a checkpoint's meta item (before its own config is known)."""
    return Config(data=config_lib.DataConfig(sources=[config_lib.SourceConfig(path="-")]))
