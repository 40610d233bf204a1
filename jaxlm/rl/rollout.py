"""Online RL's rollout stage: the batches of an RL run, made by the policy instead of read from disk.

Each step (`Rollouts.batch(trainer, step)`):
  1. draws train.global_batch / G prompts from rl.prompts, a pure function of (seed, step);
  2. generates G responses to each with the policy as it is now: the KV-cache generator
     (jaxlm.eval.generate) on the run's mesh, one batch, seeded from (seed, step), each response
     ending at the chat template's end-of-turn token or after rl.max_new_tokens;
  3. scores them with the verifier (rl.reward.verifier: response text, reference answer -> reward),
     or with a trained reward model (rl.reward.model: its score of prompt + response, jaxlm.rl.rewards);
  4. computes advantages per group (GRPO: (r - mean) / std; RLOO: r - mean of the others);
  5. lays each prompt + response out as a training row (loss mask on the response and its end of
     turn) and adds, per response token, its advantage and the log-probabilities of the sampling
     policy and of the frozen reference (one compiled forward pass each).
PPO (rl.algorithm: ppo) replaces step 4: the policy's forward pass also gives the value head's
estimates, each token's reward is -kl_coef * KL(policy || reference) there, plus the verifier's
reward on the response's last token, and GAE turns rewards and values into per-token advantages
(whitened over the batch's response tokens) and returns (`make_ppo_fields`).
The trainer's compiled step then takes the policy-gradient step (jaxlm.train.policy_gradient).

A batch is a function of the parameters, the step and the number of loss-spike rollbacks so far,
so a resumed run (parameters restored bit for bit) makes the same batches as the uninterrupted
one, and the steps redone after a rollback draw other prompts and samples.
The reference is the init.from workdir's newest checkpoint when the run starts; its step is saved
in every checkpoint (`state_dict`) and in run.json, and a resumed run reads that step again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import Config, ConfigError, RLConfig
from jaxlm.data.chat import dataset_template
from jaxlm.data.global_batch import to_global
from jaxlm.eval.chat import end_of_turn_id
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.instruct import read_cot_items
from jaxlm.eval.loading import window_of
from jaxlm.eval.tokenizer import Tokenizer
from jaxlm.eval.verifiers import load_verifier
from jaxlm.parallel import rules
from jaxlm.parallel.mesh import BATCH_AXES
from jaxlm.rl.rewards import RewardModel
from jaxlm.train import advantages as adv_lib
from jaxlm.train.checkpoint_reader import read_params, resolve_source
from jaxlm.train.loop import Hook
from jaxlm.train.objective import TOKEN_FIELDS
from jaxlm.train.policy_gradient import ESTIMATORS, token_logprobs

VALUE_PARAMS = ("value_head", "value_bias")  # the critic's parameters (model.value_head)


@dataclasses.dataclass
class Rollout:
    """One step's responses, host side; rows are prompt-major: row p * G + g is sample g of prompt p."""
    prompt_index: np.ndarray  # (P,) into the prompt items
    prompts: list[list[int]]  # (P * G) prompt ids, each repeated G times
    responses: list[list[int]]  # (P * G) generated ids, with the end-of-turn id when the response ended
    texts: list[str]  # (P * G) decoded responses (without the end of turn)
    ended: np.ndarray  # (P * G) bool: ended at the end of turn (else cut at max_new_tokens)
    rewards: np.ndarray  # (P, G)
    advantages: Optional[np.ndarray]  # (P, G); None for ppo (per token, from GAE in to_batch)


def choose_prompts(n_items: int, n: int, seed: int, step: int, attempt: int = 0) -> np.ndarray:
    """The prompts of `step`: n items (distinct when there are enough), drawn by a generator seeded
    with (seed, step, attempt) alone; `attempt` counts loss-spike rollbacks, so that the steps
    redone after one see other prompts and samples, as a rollback skips the data it saw."""
    rng = np.random.default_rng([seed, step, attempt])
    return rng.choice(n_items, n, replace=n > n_items)


def sampling_seed(seed: int, step: int, attempt: int = 0) -> int:
    """The generator's seed at `step`: distinct per (seed, step, attempt), the same on resume."""
    return int(np.random.SeedSequence([seed, step, attempt, 1]).generate_state(1)[0])


def group_advantages(rewards_PG: np.ndarray, algorithm: str, *, scale: bool = True) -> np.ndarray:
    r = jnp.asarray(rewards_PG, jnp.float32)
    out = adv_lib.grpo_advantages(r, scale=scale) if algorithm == "grpo" else adv_lib.rloo_advantages(r)
    return np.asarray(out, np.float32)


def token_rows(prompts: list[list[int]], responses: list[list[int]], seq_len: int) -> dict[str, np.ndarray]:
    """Training rows (n, seq_len) of prompt + response: inputs/targets shifted by one, one segment
    from position 0, loss_mask on the targets that are response tokens; the rest padding (0)."""
    out = {k: np.zeros((len(prompts), seq_len), np.int32) for k in TOKEN_FIELDS}
    for r, (p, resp) in enumerate(zip(prompts, responses)):
        ids = list(p) + list(resp)
        n = len(ids) - 1
        if n > seq_len:
            raise ValueError(f"row {r}: {len(ids)} tokens do not fit data.seq_len={seq_len} + 1")
        out["inputs"][r, :n], out["targets"][r, :n] = ids[:-1], ids[1:]
        out["segment_ids"][r, :n], out["positions"][r, :n] = 1, np.arange(n)
        out["loss_mask"][r, len(p) - 1:n] = 1
    return out


def make_logprobs(spec, mesh, params_sharding, batch_sharding):
    """Compiled (policy, reference, token fields (n_micro, rows, length)) -> the two models'
    log p(target), each (n_micro, rows, length) float32, 0 off the loss mask."""
    def one(params, micro):
        model = nnx.merge(spec.graphdef, params)
        h_BTD = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"])
        _, logp_BT = token_logprobs(model, h_BTD, micro["targets"])
        return jnp.where(micro["loss_mask"] > 0, logp_BT, 0.0)

    def both(policy, reference, batch):
        return tuple(jax.lax.map(lambda micro: one(p, micro), batch) for p in (policy, reference))

    return jax.jit(rules.sharded_activations(both, mesh),
                   in_shardings=(params_sharding, params_sharding, {k: batch_sharding for k in TOKEN_FIELDS}),
                   out_shardings=(batch_sharding, batch_sharding))


def last_token_scores(rewards: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """(rows, length) float32: each row's reward on its last loss-mask position, 0 elsewhere."""
    out = np.zeros(loss_mask.shape, np.float32)
    last = loss_mask.shape[1] - 1 - np.argmax(loss_mask[:, ::-1] > 0, axis=1)
    out[np.arange(len(out)), last] = rewards
    return out * (loss_mask.sum(1, keepdims=True) > 0)


def make_ppo_fields(spec, mesh, params_sharding, batch_sharding, rl: RLConfig):
    """Compiled (policy, reference, token fields, scores) -> PPO's float fields, each (n_micro, rows,
    length), 0 off the loss mask: old_logp, ref_logp, old_values (the value head's), advantages
    (GAE, whitened over the batch's response tokens) and returns (GAE's, not whitened). `scores`
    holds each response's reward on its last token; the per-token KL penalty is added to it here."""
    kl = ESTIMATORS[rl.kl_estimator]

    def one(params, micro):
        model = nnx.merge(spec.graphdef, params)
        h_BTD = model.hidden(micro["inputs"], micro["positions"], micro["segment_ids"])
        _, logp_BT = token_logprobs(model, h_BTD, micro["targets"])
        on = micro["loss_mask"] > 0
        return jnp.where(on, logp_BT, 0.0), jnp.where(on, model.values(h_BTD), 0.0)

    def fields(policy, reference, batch, scores):
        old, values = jax.lax.map(lambda micro: one(policy, micro), batch)
        ref, _ = jax.lax.map(lambda micro: one(reference, micro), batch)
        mask = batch["loss_mask"] > 0
        rewards = jnp.where(mask, scores - rl.kl_coef * kl(old, ref), 0.0)
        rows = (-1, mask.shape[-1])  # GAE runs along each row; the whitening spans every micro-batch
        adv, returns = adv_lib.gae(rewards.reshape(rows), values.reshape(rows), mask.reshape(rows),
                                   gamma=rl.gamma, lam=rl.lam)
        adv = adv_lib.whiten(adv, mask.reshape(rows))
        return {"old_logp": old, "ref_logp": ref, "old_values": values,
                "advantages": adv.reshape(mask.shape), "returns": returns.reshape(mask.shape)}

    names = ("old_logp", "ref_logp", "old_values", "advantages", "returns")
    return jax.jit(rules.sharded_activations(fields, mesh),
                   in_shardings=(params_sharding, params_sharding, {k: batch_sharding for k in TOKEN_FIELDS},
                                 batch_sharding),
                   out_shardings={k: batch_sharding for k in names})


def newest_step(workdir: str) -> int:
    directory, only = resolve_source(workdir)
    if only is not None:
        return only
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    if not steps:
        raise ConfigError(f"init.from={workdir} has no finished checkpoint to start RL from (and keep as the "
                          "reference); train it first")
    return steps[-1]


class Rollouts:
    """The RL run's batch maker; the Trainer calls start(), batch(), stats(), state_dict(), hooks()."""

    def __init__(self, config: Config):
        r = config.rl
        self.config, self.group = config, r.group_size
        self.prompts_per_step = config.train.global_batch // r.group_size
        try:
            self.verifier = load_verifier(r.reward.verifier) if r.reward.verifier else None
            self.items = read_cot_items(r.prompts)
            self.eval_items = read_cot_items(r.eval_prompts)[:r.eval_limit] if r.eval_prompts else []
        except EvalError as e:
            raise ConfigError(f"rl: {e}") from None
        self.sampling = SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                       top_k=r.top_k, top_p=r.top_p)
        self.reward_model = RewardModel(config) if r.reward.model else None  # checked here: before any compute
        self._stats: dict[int, dict] = {}
        self._handed_at: Optional[float] = None
        self.reference_step: Optional[int] = None

    # ------------------------------------------------------------------------------------------
    # Set-up (after the trainer has its state), records

    def start(self, trainer, saved: Optional[dict] = None) -> None:
        c = self.config
        self.reference_step = int(saved["reference_step"]) if saved else newest_step(c.init.from_)
        _, ref = read_params(c.init.from_, step=self.reference_step, mesh=trainer.mesh)
        if c.model.value_head:  # the reference has no critic: a zero one, for the shared graph (never read)
            ref = {**{k: np.zeros(trainer.spec.shapes[k].shape, trainer.spec.shapes[k].dtype) for k in VALUE_PARAMS},
                   **ref}
        want = jax.tree.map(lambda x: tuple(x.shape), trainer.spec.shapes)
        got = jax.tree.map(lambda x: tuple(x.shape), ref)
        if want != got:
            raise ConfigError(f"init.from={c.init.from_}: the reference model's parameters do not have this run's "
                              "shapes; give the RL run the same model.* as the run it starts from")
        self.ref_params = jax.device_put(ref, trainer.shardings["params"])
        dataset = c.data.sources[0].path  # the chat template and tokenizer the prompts are written with
        template = dataset_template(dataset)
        if template is None:
            raise ConfigError(f"data.sources[0] ({dataset}) is not an instruction dataset (its manifest has no `chat` "
                              "template); an RL run's prompts are chat turns: name the dataset the reference was "
                              "tuned on")
        try:
            self.tokenizer = Tokenizer.from_dataset(dataset)
            eot = end_of_turn_id(template, self.tokenizer)
        except EvalError as e:
            raise ConfigError(f"data.sources[0] ({dataset}): {e}") from None
        self.window = window_of(c)
        room = self.window - c.rl.max_new_tokens

        def prompt_ids(items, key):
            ids = [template.prompt_ids(self.tokenizer.sp, [{"role": "user", "content": it["question"]}]) for it in items]
            longest = max(map(len, ids), default=0)
            if longest > room:
                raise ConfigError(f"{key}: a prompt of {longest} tokens does not fit beside rl.max_new_tokens="
                                  f"{c.rl.max_new_tokens} in the model's {self.window}-token window; lower "
                                  "rl.max_new_tokens or raise data.seq_len")
            return ids

        self.prompt_ids = prompt_ids(self.items, "rl.prompts")
        self.eval_prompt_ids = prompt_ids(self.eval_items, "rl.eval_prompts")
        if saved is not None and ("reward_model" in saved) != (self.reward_model is not None):
            was = f"the reward model {saved['reward_model']['from']}" if "reward_model" in saved else "a verifier"
            raise ConfigError(f"this run was trained with rewards from {was}; resume it with that rl.reward, or start "
                              "a new workdir")
        if self.reward_model is not None:
            self.reward_model.start(trainer, max(map(len, self.prompt_ids + self.eval_prompt_ids)),
                                    saved=saved.get("reward_model") if saved else None)
        self.generator = Generator(trainer.spec.graphdef, None, self.window, tokenizer=self.tokenizer, eos_id=eot,
                                   batch_size=c.train.global_batch)  # one batch: every response of the step
        self.eot, self.mesh, self.setup = eot, trainer.mesh, trainer.setup
        self.logprobs = make_logprobs(trainer.spec, trainer.mesh, trainer.shardings["params"],
                                      trainer.setup.batch_sharding)
        if c.rl.algorithm == "ppo":
            self.ppo_fields = make_ppo_fields(trainer.spec, trainer.mesh, trainer.shardings["params"],
                                              trainer.setup.batch_sharding, c.rl)
            self.explained_variance = jax.jit(adv_lib.explained_variance)

    def state_dict(self) -> dict:
        if self.reward_model is not None:
            return {"reference_step": self.reference_step, "reward_model": self.reward_model.record()}
        return {"reference_step": self.reference_step}

    def run_record(self) -> dict:
        """run.json's `rl`: the reference as a pointer (the workdir and the checkpoint step read)."""
        r = self.config.rl
        return {"rl": {"algorithm": r.algorithm, "reference": {"from": os.path.abspath(self.config.init.from_),
                                                                "step": self.reference_step},
                       "kl_estimator": r.kl_estimator, "kl_coef": r.kl_coef,
                       "reward": {"model": self.reward_model.record()} if self.reward_model else r.reward.verifier}}

    # ------------------------------------------------------------------------------------------
    # Rollouts

    def generate(self, params, step: int, *, attempt: int = 0, use_cache: bool = True) -> Rollout:
        """The responses of `step` with `params`: bitwise the same for the same (params, step,
        attempt: rollbacks so far). use_cache=False recomputes the whole sequence for every token
        (the throughput baseline)."""
        c, g = self.config, self.group
        index = choose_prompts(len(self.items), self.prompts_per_step, c.seed, step, attempt)
        prompts = [self.prompt_ids[i] for i in index for _ in range(g)]
        self.generator.params = params
        cfg = dataclasses.replace(self.sampling, seed=sampling_seed(c.seed, step, attempt))
        with rules.activation_sharding(self.mesh):
            outs = self.generator.generate_ids(prompts, cfg, use_cache=use_cache)
        texts = [self.tokenizer.decode(o.tokens) for o in outs]
        ended = np.array([o.finish_reason == "eos" for o in outs])
        responses = [o.tokens + [self.eot] * bool(e) for o, e in zip(outs, ended)]
        rewards = self.rewards(prompts, responses, texts, [self.items[i]["answer"] for i in np.repeat(index, g)])
        rewards = rewards.astype(np.float32).reshape(-1, g)
        adv = None if c.rl.algorithm == "ppo" else group_advantages(rewards, c.rl.algorithm,
                                                                     scale=c.rl.scale_advantages)
        return Rollout(index, prompts, responses, texts, ended, rewards, adv)

    def rewards(self, prompts, responses, texts, answers) -> np.ndarray:
        """(n,): the reward model's scores of prompt + response (ids, the end of turn kept; float32),
        or the verifier's of each response text against its item's answer (float64, as it returns them)."""
        if self.reward_model is not None:
            return self.reward_model.scores(prompts, responses)
        return np.array([float(self.verifier(t, a)) for t, a in zip(texts, answers)], np.float64)

    def to_batch(self, rollout: Rollout, policy) -> dict[str, jax.Array]:
        """The trainer's batch (n_micro, rows, length) of a rollout: token fields, advantages, and
        the policy's and reference's log-probabilities of every response token; for ppo the value
        head's estimates and GAE's per-token advantages and returns in place of the group's."""
        c = self.config
        rows = token_rows(rollout.prompts, rollout.responses, c.data.seq_len)
        if rollout.advantages is not None:
            rows["advantages"] = rollout.advantages.reshape(-1, 1) * rows["loss_mask"].astype(np.float32)
        n_micro = c.train.global_batch // c.train.micro_batch
        batch = self.setup.batch({k: self.setup.own_rows(v, n_micro) for k, v in rows.items()})
        if c.rl.algorithm == "ppo":
            scores = self.setup.own_rows(last_token_scores(rollout.rewards.ravel(), rows["loss_mask"]), n_micro)
            scores = to_global({"scores": scores}, self.mesh, BATCH_AXES, leading=1)["scores"]
            return {**batch, **self.ppo_fields(policy, self.ref_params, {k: batch[k] for k in TOKEN_FIELDS}, scores)}
        old, ref = self.logprobs(policy, self.ref_params, {k: batch[k] for k in TOKEN_FIELDS})
        return {**batch, "old_logp": old, "ref_logp": ref}

    def batch(self, trainer, step: int) -> dict[str, jax.Array]:
        """The batch of step `step` + 1, made with the parameters after `step` steps."""
        params = trainer.state["params"]
        jax.block_until_ready(params)  # the update in flight finishes first: it is timed apart
        start = time.perf_counter()
        if self._handed_at is not None:
            self._stats.setdefault(step, {})["update_seconds"] = start - self._handed_at
        rollout = self.generate(params, step, attempt=trainer.spikes.rollbacks)
        generated = time.perf_counter()
        batch = jax.block_until_ready(self.to_batch(rollout, params))
        done = time.perf_counter()
        lengths = np.array([len(r) for r in rollout.responses])
        self._stats.setdefault(step + 1, {}).update({
            "reward_mean": float(rollout.rewards.mean()), "reward_std": float(rollout.rewards.std()),
            "response_length": float(lengths.mean()), "ended_share": float(rollout.ended.mean()),
            "rollout_seconds": done - start, "generate_seconds": generated - start,
            "rollout_tokens_per_sec": float(lengths.sum()) / max(generated - start, 1e-9)})
        if self.config.rl.algorithm == "ppo":  # of the value head as the update finds it (it is the sampling one)
            self._stats[step + 1]["explained_variance"] = float(self.explained_variance(
                batch["old_values"], batch["returns"], batch["loss_mask"] > 0))
        self._handed_at = time.perf_counter()
        return batch

    def stats(self, step: int) -> dict:
        """Host-side numbers of the step that ended at `step` (its rollout, its update's time)."""
        out = self._stats.pop(step, {})
        for s in [s for s in self._stats if s < step]:
            del self._stats[s]
        if "update_seconds" in out and "rollout_seconds" in out:
            out["rollout_share"] = out["rollout_seconds"] / (out["rollout_seconds"] + out["update_seconds"])
        return out

    # ------------------------------------------------------------------------------------------
    # Held-out evaluation

    def evaluate(self, params) -> dict:
        """Greedy responses to rl.eval_prompts: mean reward (the verifier's; final_number: exact match)."""
        gen = Generator(self.generator.graphdef, params, self.window, tokenizer=self.tokenizer, eos_id=self.eot,
                        batch_size=min(64, len(self.eval_prompt_ids)))
        cfg = dataclasses.replace(self.sampling, temperature=0.0)
        with rules.activation_sharding(self.mesh):
            outs = gen.generate_ids(self.eval_prompt_ids, cfg)
        responses = [o.tokens + [self.eot] * (o.finish_reason == "eos") for o in outs]
        rewards = self.rewards(self.eval_prompt_ids, responses, [self.tokenizer.decode(o.tokens) for o in outs],
                               [it["answer"] for it in self.eval_items])
        return {"eval_reward": float(np.mean(rewards)), "eval_n": len(rewards),
                "eval_ended_share": float(np.mean([o.finish_reason == "eos" for o in outs]))}

    def hooks(self) -> list[Hook]:
        def evaluate(trainer, step: int) -> None:
            result = self.evaluate(trainer.eval_params())
            if trainer.is_main:
                trainer.writer.write(step, result)

        every = self.config.rl.eval_every if self.eval_items else 0
        return [Hook("rl_eval", every, evaluate)] if every else []
