"""Fault injection from config (`faults:`), for tests and drills of the loss-spike handling.

Each fault hits steps [step, step + steps) (numbered like metrics.jsonl: step s is the s-th update):
  lr       the update is multiplied by `factor` (a learning-rate blow-up)
  garbage  the batch's inputs and targets are replaced by uniformly random tokens
  nan      every gradient is NaN
A fault hits only before the first rollback, unless `persistent`: then it hits again each time
training passes its steps after a rollback. Whether a fault hits is a pure function of the step
and the rollback count in the state, so it is compiled into the step and needs no host input; it
is compiled in only when `faults` is not empty.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxlm.config import Config, FaultConfig


class FaultInjector:
    def __init__(self, faults: list[FaultConfig], vocab_size: int, seed: int):
        self.faults = list(faults)
        self.vocab_size = vocab_size
        self._key = jax.random.key(seed + 2)

    @staticmethod
    def _hits(fault: FaultConfig, step, rollbacks):
        """step: 1-based step number; works on Python ints and on traced arrays alike."""
        in_range = (step >= fault.step) & (step < fault.step + fault.steps)
        return in_range & (fault.persistent | (rollbacks == 0))

    def hits(self, step: int, rollbacks: int) -> list[FaultConfig]:
        """The faults that hit step `step` (host side, for the incident record)."""
        return [f for f in self.faults if self._hits(f, step, rollbacks)]

    def _active(self, kind: str, state: dict):
        step, rollbacks = state["step"] + 1, state["spike"]["rollbacks"]
        active = jnp.zeros([], bool)
        for f in self.faults:
            if f.kind == kind:
                active = active | self._hits(f, step, rollbacks)
        return active

    # -- in the step

    def corrupt_batch(self, batch: dict, state: dict) -> dict:
        if not any(f.kind == "garbage" for f in self.faults):
            return batch
        active = self._active("garbage", state)
        key = jax.random.fold_in(self._key, state["step"])
        out = dict(batch)
        for i, name in enumerate(("inputs", "targets")):
            noise = jax.random.randint(jax.random.fold_in(key, i), batch[name].shape, 0, self.vocab_size,
                                       batch[name].dtype)
            out[name] = jnp.where(active, noise, batch[name])
        return out

    def corrupt_grads(self, grads, state: dict):
        if not any(f.kind == "nan" for f in self.faults):
            return grads
        active = self._active("nan", state)
        return jax.tree.map(lambda g: jnp.where(active, jnp.full_like(g, jnp.nan), g), grads)

    def scale_updates(self, updates, state: dict):
        lr = [f for f in self.faults if f.kind == "lr"]
        if not lr:
            return updates
        step, rollbacks = state["step"] + 1, state["spike"]["rollbacks"]
        factor = jnp.ones([], jnp.float32)
        for f in lr:
            factor = factor * jnp.where(self._hits(f, step, rollbacks), f.factor, 1.0)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)


def make_injector(config: Config) -> Optional[FaultInjector]:
    """None when the config injects nothing (the step then compiles without any of this)."""
    if not config.faults:
        return None
    return FaultInjector(config.faults, config.model.vocab_size, config.seed)
