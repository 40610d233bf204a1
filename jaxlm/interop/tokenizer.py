"""The dataset's SentencePiece model as Hugging Face tokenizer files, for both families.

An export ships `tokenizer.model` (the SentencePiece file itself, for anyone who uses the
sentencepiece library) and a `tokenizer.json` built here with the `tokenizers` library so that
`AutoTokenizer.from_pretrained(dir)` works offline and encodes as SentencePiece does. The gpt2
family uses the same SentencePiece model (GPT-2's byte-level BPE is a different tokenizer), so
both families get the same files; `tokenizer_config.json` names the generic fast tokenizer class.

The rebuild follows the model's own settings: whitespace escaped to '▁' (no dummy prefix unless
the model has one), SentencePiece's split into words (a run of '▁' stays with the word after it
when whitespace-only pieces are allowed), digits split when `split_digits`, user-defined pieces
(like '\\n') emitted whole, byte fallback, and BPE merges ranked by piece score. `export` checks
the result against SentencePiece on sample text and reports any difference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram

from jaxlm.data.chat import ChatTemplate

_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE, _WORD, _CHAR = 1, 2, 3, 4


def _proto(model_file: str):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def build(model_file: str, add_bos: bool = False) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes like the SentencePiece model in `model_file`."""
    proto = _proto(model_file)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk = spec.unk_piece or "<unk>"
    if spec.model_type == _BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(pieces) if kind == _NORMAL}
        ranked = []
        for piece, (score, i) in normal.items():
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, i, left, right))
        merges = [(left, right) for _, _, left, right in sorted(ranked)]
        model = BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=spec.byte_fallback)
    elif spec.model_type in (_UNIGRAM, _CHAR):  # a char model is a unigram model over single characters
        model = Unigram([(piece, score) for piece, score, _ in pieces], unk_id=spec.unk_id,
                        byte_fallback=spec.byte_fallback)
    else:
        raise ValueError(f"{model_file}: SentencePiece model type {spec.model_type} (word) has no HF equivalent")
    tok = Tokenizer(model)

    steps = []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)

    words = r"▁+[^▁]*|[^▁]+" if spec.allow_whitespace_only_pieces else r"▁[^▁]*|[^▁]+"
    splits = [pre_tokenizers.Split(Regex(words), behavior="isolated")] if spec.split_by_whitespace else []
    if spec.split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    if splits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits)

    # User-defined pieces (with chat turn tokens) are matched before everything else and never merged;
    # control pieces are special, and like SentencePiece the tokenizer reads "<s>" in text as text
    # (tokenizer_config.json: split_special_tokens).
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p, _, kind in pieces if kind == _USER])
    tok.add_special_tokens([AddedToken(p, normalized=False, special=True) for p, _, kind in pieces
                            if kind in (_CONTROL, _UNKNOWN)])

    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []))
    if add_bos and spec.bos_id >= 0:
        bos = pieces[spec.bos_id][0]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, spec.bos_id)])
    return tok


def _special(proto, index: int) -> Optional[str]:
    return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None


def export(model_file: str, out_dir: str, *, add_bos: bool = False, max_length: Optional[int] = None,
           check_texts: Sequence[str] = (), chat: Optional[ChatTemplate] = None) -> dict:
    """Writes tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json.

    chat: the dataset's chat template (instruction-tuned models): written as tokenizer_config.json's
    `chat_template`, so `tokenizer.apply_chat_template` renders and tokenizes conversations exactly as
    jaxlm trained on them (its turn tokens are user-defined pieces, matched in text like SentencePiece).

    Returns {"files": [...], "checked_texts": n, "mismatches": [first differing texts]}: the HF
    tokenizer's ids compared with SentencePiece's on `check_texts`.
    """
    import sentencepiece as spm

    proto = _proto(model_file)
    spec = proto.trainer_spec
    tok = build(model_file, add_bos)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(model_file, os.path.join(out_dir, "tokenizer.model"))
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    special = {name: _special(proto, i) for name, i in
               (("bos_token", spec.bos_id), ("eos_token", spec.eos_id), ("unk_token", spec.unk_id), ("pad_token", spec.pad_id))}
    special = {k: v for k, v in special.items() if v is not None}
    config = dict(tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False,
                  add_bos_token=add_bos, add_eos_token=False, model_max_length=max_length or int(1e30),
                  split_special_tokens=True, **special)
    if chat is not None:
        config["chat_template"] = chat.source
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)

    sp = spm.SentencePieceProcessor(model_file=model_file)
    mismatches = [t for t in check_texts if tok.encode(t, add_special_tokens=False).ids != sp.encode(t)]
    return dict(files=["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
                checked_texts=len(check_texts), mismatches=mismatches[:5], mismatch_count=len(mismatches))


def sample_texts(text: str, size: int = 2000, count: int = 50) -> list[str]:
    """`count` pieces of `text` of about `size` characters, cut at line starts, for `export`'s check."""
    lines = re.split(r"(?<=\n)", text)
    out, cur = [], ""
    for line in lines:
        cur += line
        if len(cur) >= size:
            out.append(cur)
            cur = ""
            if len(out) == count:
                break
    return out + ([cur] if cur and len(out) < count else [])
