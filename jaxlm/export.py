"""Export a training run's latest checkpoint as a Hugging Face `transformers` folder.

  python -m jaxlm.export --workdir W --out DIR [--dtype float32|float16]

DIR gets config.json, generation_config.json, model.safetensors (LlamaForCausalLM for the llama
family, GPT2LMHeadModel for gpt2) and the dataset's SentencePiece tokenizer as tokenizer.model plus
tokenizer.json / tokenizer_config.json (see jaxlm.interop.tokenizer), so that

  AutoModelForCausalLM.from_pretrained(DIR); AutoTokenizer.from_pretrained(DIR)

work offline. The tokenizer is checked against SentencePiece on validation text. A run tuned on
an instruction dataset also ships its chat template (tokenizer_config.json `chat_template`, turn
tokens special) and stops generating at the end-of-turn token (generation_config eos_token_id).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from jaxlm.config import Config, ConfigError
from jaxlm.data.chat import dataset_template
from jaxlm.data.format import DataFormatError, record_tokens
from jaxlm.data.remote import local_dataset
from jaxlm.data.shards import DocumentSource, open_dataset
from jaxlm.eval.errors import EvalError
from jaxlm.eval.loading import load_workdir
from jaxlm.eval.tokenizer import Tokenizer
from jaxlm.extras import MissingExtra, require
from jaxlm.interop import InteropError, export_hf


def export_run(config: Config, params: dict, out_dir: str, *, dtype: str = "float32",
               tokenizer_dir: Optional[str] = None, check_documents: int = 20) -> dict:
    """Writes the model and (when the run's dataset is there) its tokenizer; returns a summary."""
    from jaxlm.interop import tokenizer as hf_tokenizer  # needs `tokenizers` (optional): only when exporting one

    tokenizer_dir = tokenizer_dir or (config.data.sources[0].path if config.data.sources else None)
    if tokenizer_dir:
        try:
            tokenizer_dir = local_dataset(tokenizer_dir)  # a dataset on Cloud Storage: its local copy
        except DataFormatError as e:
            raise EvalError(str(e)) from None
    tok, chat = None, None
    if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.model")):
        tok = Tokenizer.from_dataset(tokenizer_dir)
        if os.path.isfile(os.path.join(tokenizer_dir, "manifest.json")):
            chat = dataset_template(tokenizer_dir)
    eos = tok.eos_id if tok else None
    if chat is not None:  # generation ends at the end of the assistant's turn (or at EOS)
        eos = [tok.sp.piece_to_id(chat.end_of_turn)] + ([eos] if eos is not None else [])
    files = export_hf(config.model, params, out_dir, dtype=dtype,
                      bos_id=tok.bos_id if tok else None, eos_id=eos,
                      pad_id=(tok.sp.pad_id() if tok and tok.sp.pad_id() >= 0 else None))
    summary = dict(out=out_dir, family=config.model.family, files=files, tokenizer=None)
    if tok is not None:
        texts = _check_texts(tokenizer_dir, tok, check_documents)
        report = hf_tokenizer.export(tok.model_file, out_dir, add_bos=tok.add_bos,
                                     max_length=min(config.data.seq_len, config.model.max_seq_len), check_texts=texts,
                                     chat=chat)
        summary["files"] = files + report["files"]
        summary["tokenizer"] = dict(checked_texts=report["checked_texts"], mismatches=report["mismatch_count"])
    return summary


def _check_texts(dataset_dir: str, tok, documents: int) -> list[str]:
    """Pieces of the first validation documents (nothing when the split cannot be read)."""
    from jaxlm.interop.tokenizer import sample_texts  # needs `tokenizers` (optional), as above

    try:
        docs = DocumentSource(open_dataset(dataset_dir), "val")
    except DataFormatError:
        return []
    text = "".join(tok.decode(record_tokens(docs[i])) + "\n" for i in range(min(documents, len(docs))))
    return sample_texts(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxlm.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training run folder")
    p.add_argument("--out", required=True, help="folder to write the transformers checkpoint into")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = p.parse_args(argv)
    try:
        require("hf", "safetensors", "tokenizers", needed_by="python -m jaxlm.export")  # before loading the model
        em = load_workdir(args.workdir)
        summary = export_run(em.config, em.params, args.out, dtype=args.dtype)
    except (EvalError, InteropError, ConfigError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {summary['family']} model to {args.out}: {', '.join(summary['files'])}")
    if summary["tokenizer"] is None:
        print("warning: the run's dataset (tokenizer.model) was not found; no tokenizer files written", file=sys.stderr)
    elif summary["tokenizer"]["mismatches"]:
        print(f"warning: the HF tokenizer encodes {summary['tokenizer']['mismatches']} of "
              f"{summary['tokenizer']['checked_texts']} sample texts differently from SentencePiece; "
              "use tokenizer.model with the sentencepiece library for exact ids", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
