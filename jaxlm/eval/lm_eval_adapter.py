"""EleutherAI lm-evaluation-harness adapter: run its task library against a jaxlm model.

    pip install lm-eval
    lm_eval --model jaxlm --model_args workdir=runs/demo --tasks hellaswag --include_path ...
    # or in Python:
    from jaxlm.eval.lm_eval_adapter import JaxlmLM
    lm_eval.simple_evaluate(model=JaxlmLM(workdir="runs/demo"), tasks=[...])

(`--model jaxlm` needs this module imported first, e.g. through `python -c` or a plugin; the
Python route always works.) Scoring goes through jaxlm's own Scorer and Generator, so numbers
equal jaxlm's harness for the same prompts. An empty context (lm-eval's rolling log-likelihood,
some cloze tasks) is conditioned on BOS when the dataset uses BOS, else on EOS — as lm-eval does
for models without BOS; jaxlm never trains the step from EOS to a next document, so such first
tokens score like unconditioned guesses.
"""

from __future__ import annotations

from typing import Optional

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.harness import encode_pair
from jaxlm.eval.loading import EvalModel, load_hf_dir, load_workdir
from jaxlm.eval.scoring import Scorer, rolling_windows


@register_model("jaxlm")
class JaxlmLM(LM):
    def __init__(self, workdir: Optional[str] = None, hf: Optional[str] = None, batch_size: int | str = 8,
                 model: Optional[EvalModel] = None, max_gen_toks: int = 256, **_ignored):
        super().__init__()
        if model is None:
            if not (workdir or hf):
                raise EvalError("JaxlmLM needs workdir=RUN_DIR or hf=CHECKPOINT_DIR")
            model = load_workdir(workdir) if workdir else load_hf_dir(hf)
        if model.tokenizer is None:
            raise EvalError("lm-eval passes text: the model needs its tokenizer")
        self.em = model
        self.tok = model.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_gen_toks = max_gen_toks
        self.scorer = Scorer(model.graphdef, model.params, model.window, self.batch_size)
        start = self.tok.prefix() or ([self.tok.eos_id] if self.tok.eos_id is not None else [])
        if not start:
            raise EvalError("the tokenizer has neither BOS nor EOS to condition an empty context on")
        self.start = start

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            return self.start, self.tok.encode(continuation)
        return encode_pair(self.tok, context, continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scores = self.scorer.score([self._pair(*r.args) for r in requests])
        return [(s.logprob, s.greedy) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in requests:
            ids = self.start + self.tok.encode(r.args[0])
            windows = rolling_windows(ids, self.em.window, self.em.window)
            out.append(sum(s.logprob for s in self.scorer.score(windows)))
        return out

    def _sampling(self, kwargs: dict) -> SamplingConfig:
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(kwargs.get("do_sample", False))
        return SamplingConfig(
            max_new_tokens=min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.em.window // 2),
            temperature=float(kwargs.get("temperature", 1.0)) if sample else 0.0,
            top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0), stop=tuple(until))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        gen = Generator(self.em.graphdef, self.em.params, self.em.window, tokenizer=self.tok,
                        batch_size=self.batch_size)
        groups: dict[SamplingConfig, list[int]] = {}  # requests with the same settings run as one batch
        for i, r in enumerate(requests):
            groups.setdefault(self._sampling(r.args[1]), []).append(i)
        out: list[str] = [""] * len(requests)
        for cfg, members in groups.items():
            for i, g in zip(members, gen.generate([requests[i].args[0] for i in members], cfg)):
                out[i] = g.text
        return out
