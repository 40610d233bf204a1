"""How far a tuned model has moved from its reference: KL(policy || reference) on prompts, estimated
from the policy's own samples.

For each prompt x, answers y ~ policy (temperature 1, seeded) are scored by both models:
KL(policy || reference)(x) = E_y[log policy(y|x) - log reference(y|x)], summed over the answer's
tokens (the end-of-turn token included when the answer ended): the sequence-level k1 estimator,
unbiased, averaged over prompts and samples. Both models must share the tokenizer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxlm.data.chat import ChatTemplate
from jaxlm.eval.chat import end_of_turn_id
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import EvalModel
from jaxlm.eval.scoring import Scorer


def sampled_kl(policy: EvalModel, reference: EvalModel, template: ChatTemplate, questions: Sequence[str], *,
               samples: int = 1, max_new_tokens: int = 64, seed: int = 0, batch_size: int = 64) -> dict:
    """{"kl": mean sequence KL estimate, "kl_stderr", "n"} over `samples` answers per question."""
    if policy.tokenizer is None or reference.tokenizer is None or policy.tokenizer.vocab_size != reference.tokenizer.vocab_size:
        raise EvalError("the KL to the reference needs both models to share one tokenizer")
    eot = end_of_turn_id(template, policy.tokenizer)
    prompts = [template.prompt_ids(policy.tokenizer.sp, [{"role": "user", "content": q}])
               for q in questions for _ in range(samples)]
    outs = Generator(policy.graphdef, policy.params, policy.window, tokenizer=policy.tokenizer, eos_id=eot,
                     batch_size=batch_size).generate_ids(prompts, SamplingConfig(max_new_tokens=max_new_tokens,
                                                                                 temperature=1.0, seed=seed))
    requests = [(p, g.tokens + ([eot] if g.finish_reason == "eos" else [])) for p, g in zip(prompts, outs)]
    requests = [r for r in requests if r[1]]
    logp = {name: np.array([s.logprob for s in Scorer(em.graphdef, em.params, em.window, batch_size).score(requests)])
            for name, em in (("policy", policy), ("reference", reference))}
    diff = logp["policy"] - logp["reference"]
    return {"kl": float(np.mean(diff)), "kl_stderr": float(np.std(diff) / np.sqrt(max(1, len(diff)))), "n": len(diff)}
