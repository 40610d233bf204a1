"""Sample text from a trained model (KV-cache generation, jaxlm.eval.generate).

  python -m jaxlm.sample --workdir W --prompt "def fib(n):" [--prompt ...] [--max-new-tokens N]
                         [--temperature 0.8] [--top-k 50] [--top-p 0.95] [--stop STR] [--seed 0]

  python -m jaxlm.sample --workdir W --chat --prompt "What does json.dumps do?" [--prompt "And loads?"]
                         [--system TEXT] [--messages conversation.json]

--max-new-tokens defaults to 128, or half the model's context when that is shorter, so a prompt
always has room. Temperature 0 is greedy decoding. A prompt longer than the context keeps its rightmost tokens
(context - max_new_tokens of them); the output says when that happened.

--chat (an instruction-tuned model: the run's dataset, or the transformers folder, has a chat
template): each --prompt is the next user turn, rendered with the template and the generation
prompt; the reply ends at the end-of-turn token and joins the conversation before the next turn.
--messages gives the conversation so far as a JSON list of {role, content} (answered first when
it ends with a user turn).
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxlm.config import ConfigError
from jaxlm.eval.chat import converse, hf_template, workdir_template
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
    p.add_argument("--prompt", action="append", default=[],
                   help="prompt text (repeat for a batch; with --chat: the user's turns, in order)")
    p.add_argument("--chat", action="store_true", help="apply the model's chat template; stop at end of turn")
    p.add_argument("--system", help="with --chat: a system message to start the conversation")
    p.add_argument("--messages", help="with --chat: JSON file with the conversation so far [{role, content}, ...]")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 128, or half the model's context when that is shorter")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.chat and (args.system or args.messages):
        p.error("--system and --messages need --chat")
    if not args.prompt and not args.messages:
        p.error("give --prompt (or, with --chat, --messages)")
    try:
        history = _history(args.system, args.messages) if args.chat else []  # bad input before loading a model
        em = load_workdir(args.workdir) if args.workdir else load_hf_dir(args.hf)
        if em.tokenizer is None:
            raise EvalError(f"{args.hf} has no tokenizer.model to turn prompts into tokens")
        max_new = args.max_new_tokens if args.max_new_tokens is not None else min(128, em.window // 2)
        cfg = SamplingConfig(max_new_tokens=max_new, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop=tuple(args.stop), seed=args.seed)
        if args.chat:
            template = workdir_template(em) if args.workdir else hf_template(args.hf, em)
            chats = converse(em, template, args.prompt, cfg, history=history, samples=args.num_samples)
            return _print_chats(chats, len(history))
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


def _history(system, messages_file) -> list[dict]:
    history = [{"role": "system", "content": system}] if system else []
    if messages_file:
        try:
            with open(messages_file, encoding="utf-8") as f:
                messages = json.load(f)
        except (OSError, ValueError) as e:
            raise EvalError(f"--messages {messages_file}: cannot read a JSON list of messages ({e})") from None
        if not isinstance(messages, list):
            raise EvalError(f"--messages {messages_file} must hold a JSON list of {{role, content}} messages")
        history += messages
    return history


def _print_chats(chats: list[list[dict]], shown_from: int) -> int:
    for i, chat in enumerate(chats):
        print(f"=== conversation {i + 1}" if len(chats) > 1 else "===")
        for m in chat[shown_from:]:
            note = f" ({m['finish_reason']})" if m["role"] == "assistant" else ""
            print(f"[{m['role']}]{note}\n{m['content']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
