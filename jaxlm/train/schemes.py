"""Training schemes: the state's layout and the step over it, behind the methods the loop uses.

`Standard` is the ordinary one: one set of parameters, every step's gradients reduced over the
data axes (state.py, step.py). `diloco.DiLoCo` keeps replicas that synchronise every H steps.
Both have: `shardings`, `step`, `fresh_opt_state`, `init()`, `abstract()`, `jit(fn, batch_sharding)`,
`spike_counters(state)`, `rolled_back(state, plan, skips)`, `checkpoint_extra()`,
`check_resumable(manager)`. setup.py picks one from the config.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import optax
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.parallel import rules
from jaxlm.train import checkpoint, diloco, spikes
from jaxlm.train import objective as objective_lib
from jaxlm.train.objective import Objective
from jaxlm.train.state import ModelSpec, build_optimizer, init_state, state_shardings
from jaxlm.train.step import make_train_step


class Standard:
    """The ordinary state {"params", "opt_state", "step", "lr_scale", "spike"} and its step."""

    def __init__(self, config: Config, spec: ModelSpec, mesh: Mesh,
                 optimizer: Optional[optax.GradientTransformation] = None, objective: Optional[Objective] = None):
        self.config, self.spec, self.mesh = config, spec, mesh
        self.optimizer = optimizer or build_optimizer(config, spec)
        self.shardings = state_shardings(spec, self.optimizer, mesh)
        objective = objective or objective_lib.build(config)
        self.fields = objective.batch_fields
        self.step = make_train_step(config, spec, self.optimizer, mesh, objective)
        # a resume with another optimizer continues with a fresh optimizer state (checkpoint.py)
        self.fresh_opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])

    def init(self) -> dict:
        return init_state(self.config, self.spec, self.optimizer, self.shardings)

    def abstract(self) -> dict:
        return checkpoint.abstract_state(self.config, self.spec, self.optimizer, self.shardings)

    def jit(self, fn: Callable, batch_sharding) -> Callable:
        """`fn(state, batch)` compiled on the mesh: the state's shardings, state donated."""
        return jax.jit(rules.sharded_activations(fn, self.mesh),
                       in_shardings=(self.shardings, {k: batch_sharding for k in self.fields}),
                       out_shardings=(self.shardings, None), donate_argnums=0)

    def spike_counters(self, state: dict) -> dict:
        return jax.device_get({"skips": state["spike"]["skips"], "lr_scale": state["lr_scale"],
                               "rollbacks": state["spike"]["rollbacks"]})

    def rolled_back(self, restored: dict, plan: spikes.RollbackPlan, skips) -> dict:
        return spikes.rolled_back_state(restored, plan, int(skips))

    def checkpoint_extra(self) -> dict:
        return {}

    def check_resumable(self, manager: checkpoint.CheckpointManager) -> None:
        diloco.check_resumable(manager, self.config, None)  # refuses a DiLoCo run's checkpoints
