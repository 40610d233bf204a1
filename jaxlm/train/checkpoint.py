"""Checkpoints of a run, with Orbax: save in the background, resume from the latest good one.

`<workdir>/checkpoints/<step>/` holds two Orbax items:
    state  the train state {"params", "opt_state", "step", "lr_scale", ...}; every process writes
           the shards it owns. The dropout RNG needs no saving: the step derives it from (seed, step).
    meta   JSON: every process's data-loader state (keyed by process index), the `extra` dict the
           loop passes (spike-detector state), the resolved config, and a checksum of every array.
Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when complete (on Cloud Storage,
which cannot rename, it writes a commit marker last instead), so a checkpoint cut short by a kill
is never listed; leftovers are removed before the next save. The workdir may be local or `gs://`.

Restoring walks from the newest checkpoint back: one whose items are missing, unreadable or whose
arrays do not match their checksums is recorded in incidents.jsonl, moved to
`checkpoints.corrupt/`, and the one before it is tried. Any other failure (out of memory, a
permission or I/O error) stops the run with that error and moves nothing. Arrays are placed with
the restoring run's shardings, so a checkpoint resumes on another mesh or device count. See
docs/checkpointing.md.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxlm import config as config_lib, storage
from jaxlm.config import Config, ConfigError
from jaxlm.train import resume
from jaxlm.train.checkpoint_reader import (  # the on-disk format, shared with evaluation's reader
    CHECKPOINT_DIR, META_VERSION, CheckpointError, MetaSave, Unusable, checksum_tree, is_format_failure, item_handlers,
    leaves_by_path, read_meta, resolve_source, restore_arrays, saved_arrays, shapes_of, verify)
from jaxlm.train.incidents import Incidents
from jaxlm.train.preemption import SignalWatcher, processes_agree
from jaxlm.train.state import init_state

class Restored(NamedTuple):
    state: dict  # the train state, placed with the restoring run's shardings
    loader_state: dict  # {"<process index>": loader state} of every process at save time
    extra: dict  # what the loop passed as `extra` when saving ({} if nothing)
    step: int


def abstract_state(config: Config, spec, optimizer, shardings: dict) -> dict:
    """The train state as ShapeDtypeStructs carrying `shardings` (the restore target); nothing is computed."""
    shapes = jax.eval_shape(lambda: init_state(config, spec, optimizer, shardings))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def _abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


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
        self.directory = storage.absolute(directory or storage.join(workdir, CHECKPOINT_DIR))
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
        if read_only and not storage.isdir(directory):
            raise CheckpointError(f"{directory} does not exist: no checkpoints to restore there")
        return ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers())

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
            "version": META_VERSION,
            "step": int(step),
            "reason": reason,
            "saved_at": time.time(),
            "process_count": jax.process_count(),
            "loader": {str(i): s for i, s in enumerate(loaders)},
            "extra": extra or {},
            "config": self._config_dict,
            "checksums": checksum_tree(state),  # dispatched now, fetched by the background write
        }
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=MetaSave(meta))
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
            except Unusable as e:
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
        except Unusable as e:
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
        return read_meta(self._mngr, step)

    def _restore(self, step: int, target: dict, fresh_opt_state) -> Restored:
        where = f"{self.directory}/{step}"
        problem, meta, saved = None, None, None
        try:
            meta = self.read_meta(step)
            saved = saved_arrays(self._mngr, step)
        except Unusable as e:
            problem = str(e)
        if not _all_ok(problem is None):
            raise Unusable(problem or "another process could not read it")

        target = _abstract_like(target)
        saved_config = meta["config"]
        wanted = leaves_by_path(target)
        resume.check_model_fits(saved_config, self._config_dict, shapes_of(saved, "params"),
                                shapes_of(wanted, "params"), where)
        reset_optimizer = "opt_state" in target and (
            saved_config.get("optim", {}).get("name") != self.config.optim.name
            or shapes_of(saved, "opt_state") != shapes_of(wanted, "opt_state"))
        if reset_optimizer:
            if fresh_opt_state is None:
                raise ConfigError(f"the checkpoint {where} holds another optimizer's state "
                                  f"({saved_config.get('optim', {}).get('name')!r}, now {self.config.optim.name!r})")
            target = {k: v for k, v in target.items() if k != "opt_state"}

        problem = None
        try:
            state = restore_arrays(self._mngr, step, target)
            verify(state, meta["checksums"], saved)
        except Unusable as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001 - truncated files, missing items, tensorstore errors...
            if not is_format_failure(e):
                raise  # memory, permissions, I/O: not the checkpoint's fault; it stays where it is
            problem = f"its arrays cannot be read ({type(e).__name__}: {str(e)[:300]})"
        if not _all_ok(problem is None):
            raise Unusable(problem or "another process could not read its part")

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

    def _set_aside(self, step: int, why: str, folder: str = "corrupt", kind: str = "checkpoint_corrupt") -> None:
        """Records the incident and moves the step out of the way (kept, not deleted)."""
        destination = f"{self.directory}.{folder}/{step}"
        self.incidents.record(kind, step, directory=f"{self.directory}/{step}",
                              moved_to=None if self.read_only else destination, why=why)
        logging.warning("checkpoint %d in %s set aside (%s): %s", step, self.directory, folder, why)
        if self.is_main and not self.read_only:
            if storage.exists(destination):
                destination = f"{destination}-{int(time.time())}"
            storage.move(f"{self.directory}/{step}", destination)
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
