"""A checkpoint on disk, and reading parameters out of one (eval, sample, export, interop).

`<workdir>/checkpoints/<step>/` holds two Orbax items: `state` (the train state's arrays) and
`meta` (JSON: loader states, the loop's `extra`, the resolved config, a checksum of every array).
This module is that format — names, checksums, the meta item — and the reading of it, with no
part of the trainer: checkpoint.py (the manager that saves, resumes, rolls back and sets aside)
builds on it, and `read_params` gives evaluation a run's parameters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from jaxlm import config as config_lib, storage
from jaxlm.config import Config, ConfigError
from jaxlm.model import Transformer
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train.optimizer import eval_params
from jaxlm.train.state import build_optimizer, model_spec, state_shardings

CHECKPOINT_DIR = "checkpoints"
META_VERSION = 1
META_FILE = "metadata"


class CheckpointError(ConfigError):
    """No usable checkpoint where one was asked for; the message says where and what to do."""


class Unusable(Exception):
    """A checkpoint that cannot be restored (missing, unreadable or corrupt)."""


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def leaves_by_path(tree: Any) -> dict[str, Any]:
    """{"a/b/c": leaf}: a pytree's leaves by their path, the names checkpoints use."""
    return {_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shapes_of(leaves: dict[str, Any], prefix: str = "") -> dict[str, tuple]:
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
def checksum_tree(tree):
    def one(x):
        w = _words(x)
        if w is None:
            return None
        odd = jnp.arange(w.size, dtype=jnp.uint32) * 2 + 1
        return jnp.sum(w * odd, dtype=jnp.uint32)
    return jax.tree.map(one, tree)


def checksums(tree: Any) -> dict[str, int]:
    """{"params/embed/embedding": checksum, ...}; a collective in multi-process runs."""
    return _fetch_checksums(checksum_tree(tree))


def _fetch_checksums(pending: Any) -> dict[str, int]:
    return {_path_name(p): int(x) for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(pending))[0]}


class MetaHandler(ocp.JsonCheckpointHandler):
    """The meta item: JSON that process 0 writes in the background part of the save. Its "checksums"
    arrive as device arrays still being computed and are fetched there, so the training loop never
    waits for them (on a CPU they take a pass over the whole state)."""

    def __init__(self):
        super().__init__(filename=META_FILE)

    async def async_save(self, directory, item=None, args=None):
        meta = dict(args.item)

        async def write() -> None:
            if jax.process_index() == 0:
                meta["checksums"] = await asyncio.to_thread(_fetch_checksums, meta["checksums"])
                (directory / META_FILE).write_text(json.dumps(meta))

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="jaxlm_meta_save")]


@ocp.args.register_with_handler(MetaHandler, for_save=True)
@dataclasses.dataclass
class MetaSave(ocp.args.CheckpointArgs):
    item: dict


@ocp.args.register_with_handler(MetaHandler, for_restore=True)
@dataclasses.dataclass
class MetaRestore(ocp.args.CheckpointArgs):
    item: Optional[bytes] = None  # unused: the meta item is read whole


def resolve_source(path: str) -> tuple[str, Optional[int]]:
    """A workdir, its checkpoints/ folder, or one checkpoints/<step> -> (checkpoints folder, step or None)."""
    path = storage.absolute(path)
    if storage.isdir(storage.join(path, CHECKPOINT_DIR)):
        return storage.join(path, CHECKPOINT_DIR), None
    if storage.basename(path).isdigit() and storage.isdir(path):
        return storage.dirname(path), int(storage.basename(path))
    if storage.isdir(path):
        return path, None
    raise CheckpointError(f"{path} does not exist; give a run's workdir, its {CHECKPOINT_DIR}/ folder, "
                          f"or one {CHECKPOINT_DIR}/<step> folder")


# ----------------------------------------------------------------------------------------------
# Reading

# Errors that say nothing about the checkpoint: memory, permissions, a full or failing disk, a
# network filesystem timing out. They stop the run with the error (the checkpoints stay where they
# are); anything else while reading (a missing item, truncated data, a format it cannot parse) is
# the checkpoint's fault.
_NOT_THE_CHECKPOINT = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOSPC, errno.ENOMEM, errno.ETIMEDOUT,
                       errno.EAGAIN, errno.EINTR, errno.ESTALE, errno.EMFILE, errno.ENFILE}


def is_format_failure(e: BaseException) -> bool:
    """Whether reading failed because of the checkpoint itself (unreadable or corrupt), not the machine."""
    if isinstance(e, MemoryError):
        return False
    if isinstance(e, OSError) and e.errno in _NOT_THE_CHECKPOINT:
        return False
    text = str(e)
    return not any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory"))



def item_handlers() -> dict:
    return {"state": ocp.PyTreeCheckpointHandler(), "meta": MetaHandler()}


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The meta item of checkpoint `step`; Unusable when it cannot be read or is not jaxlm's."""
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=MetaRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - a format failure means the checkpoint is unusable
        if not is_format_failure(e):
            raise
        raise Unusable(f"its meta item cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION or "checksums" not in meta:
        raise Unusable("its meta item is not a jaxlm checkpoint description")
    return meta


def saved_arrays(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """{path: Orbax array metadata (shape, dtype)} of the state item."""
    try:
        tree = mngr.item_metadata(step)["state"].tree
    except Exception as e:  # noqa: BLE001
        if not is_format_failure(e):
            raise
        raise Unusable(f"its state item has no readable metadata ({type(e).__name__}: {str(e)[:300]})") from None
    return leaves_by_path(tree)


def restore_arrays(mngr: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """The arrays of `target` (ShapeDtypeStructs with shardings; a part of the state's tree is
    enough) read from checkpoint `step` and placed."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)))["state"]


def verify(state: dict, expected: dict, saved: dict) -> None:
    """Unusable unless every restored array matches the checksum written with it (an array read
    into another dtype, e.g. param_dtype changed on resume, has a different bit pattern)."""
    restored = leaves_by_path(state)
    for name, value in checksums(state).items():
        if name not in expected:
            raise Unusable(f"{name} has no checksum in its meta item")
        cast = jnp.dtype(saved[name].dtype) != restored[name].dtype
        if value != expected[name] and not cast:
            raise Unusable(f"the data of {name} does not match the checksum written with it")


def read_params(workdir: str, step: Optional[int] = None, mesh=None) -> tuple[Config, dict]:
    """(config, params) of the newest checkpoint in `workdir` that restores (or of `step`), for
    evaluation and sampling. The parameters are placed on `mesh`, by default all of this process's
    devices with the config's logical rules (replicated unless the mesh has fsdp/tensor axes).
    `workdir` may also be a checkpoints/ folder or checkpoints/<step>. No optimizer state is read,
    except for schedule-free runs, whose averaged (evaluation) parameters need it.
    """
    directory, only = resolve_source(workdir)
    step = only if step is None else step
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                 item_handlers=item_handlers())
    try:
        steps = sorted(mngr.all_steps())
        candidates = [step] if step is not None else list(reversed(steps))
        if not candidates or (step is not None and step not in steps):
            raise CheckpointError(f"no finished checkpoint{'' if step is None else f' of step {step}'} in "
                                  f"{directory} (there are: {steps}); train first, or point at a workdir that has one")
        problems = []
        for s in candidates:
            try:
                meta = read_meta(mngr, s)
                config = config_lib.config_from_dict(meta["config"])
                abstract = nnx.eval_shape(lambda: Transformer(config.model, rngs=nnx.Rngs(0)))
                shapes, axes = nnx.to_pure_dict(nnx.state(abstract)), rules.logical_axes(abstract)
                if mesh is None:
                    mesh = build_mesh(config_lib.MeshConfig(data=-1), jax.local_devices())
                shardings = rules.param_shardings(axes, shapes, mesh)
                target = {"params": jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                                 shapes, shardings)}
                averaged = config.optim.name == "schedule_free_adamw"  # its evaluation point needs the state
                if averaged:
                    spec = model_spec(config)
                    optimizer = build_optimizer(config, spec)
                    target["opt_state"] = jax.tree.map(
                        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        jax.eval_shape(optimizer.init, spec.shapes), state_shardings(spec, optimizer, mesh)["opt_state"])
                saved = saved_arrays(mngr, s)
                if shapes_of(saved, "params") != shapes_of(leaves_by_path(target), "params"):
                    raise Unusable("its parameters do not have the shapes its own config makes")
                try:
                    params = restore_arrays(mngr, s, target)
                except Exception as e:  # noqa: BLE001 - truncated files, missing items, tensorstore errors...
                    if not is_format_failure(e):
                        raise
                    raise Unusable(f"its arrays cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
                verify(params, meta["checksums"], saved)
                if averaged:
                    return config, eval_params(config.optim, params["params"], params["opt_state"])
                return config, params["params"]
            except (Unusable, ConfigError) as e:
                problems.append(f"step {s}: {e}")
                logging.warning("checkpoint %d in %s skipped: %s", s, directory, e)
        raise CheckpointError(f"no checkpoint in {directory} restores: " + "; ".join(problems))
    finally:
        mngr.close()
