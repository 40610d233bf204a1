"""Online RL's rewards from a trained reward model (rl.reward.model: the workdir of a run trained
with train.objective: reward and model.reward_head: true, e.g. configs/reward_arith.yaml).

The reward of a response is the reward model's score of prompt + response (the response's end of
turn included when it ended): its scalar head on the sequence's last token, computed by the same
function and on the same row layout as `python -m jaxlm.eval --reward` (jaxlm.eval.pairs), compiled
once on the run's mesh and run on all of a step's responses in one call, micro-batch by micro-batch.

The model is checked before any compute (a workdir with config.yaml, a reward head, a finished
checkpoint, the policy's tokenizer), read once at set-up (its newest checkpoint) and never trained.
Its workdir, step and a fingerprint of its parameters are saved with every checkpoint and in
run.json; a resumed run reads that step again and refuses when the parameters are not the same.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils

from jaxlm import storage
from jaxlm.config import Config, ConfigError, config_from_dict
from jaxlm.data.format import DataFormatError
from jaxlm.data.shards import open_dataset
from jaxlm.eval.loading import graphdef_of, window_of
from jaxlm.eval.pairs import conversation, scoring_rows, sequence_scores
from jaxlm.parallel import rules
from jaxlm.train.checkpoint_reader import CHECKPOINT_DIR, CheckpointError, checksums, read_params
from jaxlm.train.objective import TOKEN_FIELDS

TRAIN_ONE = "train one with train.objective: reward and model.reward_head: true (e.g. configs/reward_arith.yaml)"


def fingerprint(params) -> str:
    """A short digest of a parameter tree's contents (every array's checksum, by path)."""
    return hashlib.sha256(json.dumps(sorted(checksums(params).items())).encode()).hexdigest()[:16]


class RewardModel:
    """The rewards of an RL run whose rl.reward.model is set; Rollouts calls start() then scores()."""

    def __init__(self, config: Config):
        self.config = config
        self.workdir = storage.absolute(config.rl.reward.model)
        where = f"rl.reward.model={config.rl.reward.model}"
        if not storage.isdir(self.workdir):
            raise ConfigError(f"{where} does not exist; give the workdir of a reward model run ({TRAIN_ONE})")
        config_file = storage.join(self.workdir, "config.yaml")
        if not storage.isfile(config_file):
            raise ConfigError(f"{where} holds no config.yaml: it is not a jaxlm training run; give the workdir of a "
                              f"reward model run ({TRAIN_ONE})")
        self.model_config = config_from_dict(yaml.safe_load(storage.read_text(config_file)), source=config_file)
        m = self.model_config
        if not m.model.reward_head:
            raise ConfigError(f"{where} is not a reward model: it was trained with train.objective="
                              f"{m.train.objective} and has no reward head (model.reward_head: false); {TRAIN_ONE}")
        checkpoints = storage.join(self.workdir, CHECKPOINT_DIR)
        self.steps = sorted(int(n) for n in storage.listdir(checkpoints) if n.isdigit()) \
            if storage.isdir(checkpoints) else []
        if not self.steps:
            raise ConfigError(f"{where} has no finished checkpoint; train the reward model first")
        policy_data = config.data.sources[0].path
        if not m.data.sources:
            raise ConfigError(f"{where}: its config names no data.sources, so its tokenizer is unknown; give a reward "
                              "model trained on pairs tokenized like the policy's data")
        try:
            mine = open_dataset(m.data.sources[0].path, m.model.vocab_size)
            policy = open_dataset(policy_data)
        except DataFormatError as e:
            raise ConfigError(f"{where}: cannot compare its tokenizer with the policy's: {e}") from None
        if mine.tokenizer_sha256 != policy.tokenizer_sha256:
            raise ConfigError(f"{where} was trained on {m.data.sources[0].path}, tokenized with another tokenizer than "
                              f"the policy's data.sources[0] ({policy_data}): its token ids mean other pieces; give a "
                              "reward model trained on pairs made with the policy's tokenizer (data_prep's "
                              "tokenizer.path)")
        self.step: Optional[int] = None
        self.checksum: Optional[str] = None

    def start(self, trainer, longest_prompt: int, saved: Optional[dict] = None) -> None:
        """Reads the parameters (the newest checkpoint, or on resume the step `saved` records, which
        must still hold the same parameters) and compiles the scoring."""
        c, where = self.config, f"rl.reward.model={self.config.rl.reward.model}"
        if saved is not None and saved["from"] != self.workdir:
            raise ConfigError(f"this run was trained with rewards from {saved['from']} (step {saved['step']}), but "
                              f"{where} now; resume with the reward model it was trained with, or start a new workdir")
        self.step = int(saved["step"]) if saved is not None else self.steps[-1]
        try:
            model_config, params = read_params(self.workdir, step=self.step, mesh=trainer.mesh)
        except CheckpointError as e:
            if saved is None:
                raise
            raise ConfigError(f"this run was trained with rewards from {self.workdir} step {self.step}, which cannot "
                              f"be read again ({e}); resume with that reward model, or start a new workdir") from None
        if not model_config.model.reward_head:  # config.yaml is the last launch's; the checkpoint has its own
            raise ConfigError(f"{where}: checkpoint {self.step} has no reward head; {TRAIN_ONE}")
        self.params, self.window = params, window_of(model_config)
        self.graphdef = graphdef_of(model_config.model)
        if longest_prompt + c.rl.max_new_tokens > self.window:
            raise ConfigError(f"{where}: a prompt of {longest_prompt} tokens and rl.max_new_tokens="
                              f"{c.rl.max_new_tokens} do not fit in the reward model's {self.window}-token window "
                              "(its data.seq_len); lower rl.max_new_tokens or give a reward model trained on longer "
                              "sequences")
        self.checksum = fingerprint(params)
        if saved is not None and saved["checksum"] != self.checksum:
            raise ConfigError(f"the reward model changed: {self.workdir} step {self.step} no longer holds the "
                              "parameters this run was trained with (retrained in place?); resume with the reward "
                              "model it was trained with, or start a new workdir")
        t = c.train
        self.rows, self.micro, self.setup = t.global_batch, t.micro_batch, trainer.setup
        graphdef, batch_sharding = self.graphdef, trainer.setup.batch_sharding

        def scores(params, batch):  # (n_micro, rows, length) -> (n_micro, rows)
            return jax.lax.map(lambda micro: sequence_scores(graphdef, params, micro), batch)

        self.score_fn = jax.jit(rules.sharded_activations(scores, trainer.mesh),
                                in_shardings=(jax.tree.map(lambda x: x.sharding, params),
                                              {k: batch_sharding for k in TOKEN_FIELDS}))

    def scores(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> np.ndarray:
        """(n,) float32: the reward model's score of each prompt + response (token ids), in calls
        of the step's global batch (the last one padded with empty rows)."""
        out = []
        for start in range(0, len(prompts), self.rows):
            seqs = [conversation(p, r) for p, r in zip(prompts[start:start + self.rows],
                                                       responses[start:start + self.rows])]
            rows = scoring_rows(seqs, self.window, self.rows)
            batch = self.setup.batch({k: self.setup.own_rows(v, self.rows // self.micro) for k, v in rows.items()})
            values = self.score_fn(self.params, {k: batch[k] for k in TOKEN_FIELDS})
            out.append(np.asarray(multihost_utils.process_allgather(values, tiled=True), np.float32)
                       .reshape(-1)[:len(seqs)])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def record(self) -> dict:
        """The reward model as a pointer: its workdir, the checkpoint step read, its parameters' fingerprint."""
        return {"from": self.workdir, "step": self.step, "checksum": self.checksum}
