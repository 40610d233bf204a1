"""Sample text from a trained model (KV-cache generation, jaxlm.eval.generate).

  python -m jaxlm.sample --workdir W --prompt "def fib(n):" [--prompt ...] [--max-new-tokens 128]
                         [--temperature 0.8] [--top-k 50] [--top-p 0.95] [--stop STR] [--seed 0]

Temperature 0 is greedy decoding. A prompt longer than the context keeps its rightmost tokens
(context - max_new_tokens of them); the output says when that happened.
"""

from __future__ import annotations

import argparse
import sys

from jaxlm.config import ConfigError
from jaxlm.eval.errors import EvalError
from jaxlm.eval.generate import Generator, SamplingConfig
from jaxlm.eval.loading import load_hf_dir, load_workdir
from jaxlm.interop import InteropError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxlm.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training run folder")
    src.add_argument("--hf", help="transformers checkpoint folder with tokenizer.model")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        em = load_workdir(args.workdir) if args.workdir else load_hf_dir(args.hf)
        if em.tokenizer is None:
            raise EvalError(f"{args.hf} has no tokenizer.model to turn prompts into tokens")
        cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)
        prompts = [pr for pr in args.prompt for _ in range(args.num_samples)]
        outs = Generator(em.graphdef, em.params, em.window, tokenizer=em.tokenizer).generate(prompts, cfg)
    except (EvalError, InteropError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, out in zip(prompts, outs):
        note = f" [prompt cut: {out.prompt_tokens_dropped} tokens dropped on the left]" if out.prompt_tokens_dropped else ""
        print(f"--- ({out.finish_reason}, {len(out.tokens)} tokens){note}")
        print(prompt + out.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
