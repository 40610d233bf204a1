"""Tokenizer stage: train a SentencePiece model on a sample of the train split, or install an existing one.

SentencePiece learns from "sentences" (lines) and silently drops any longer than
max_sentence_length bytes. So documents are cut into lines and over-long lines into pieces below
that limit before sampling, and the manifest records how many characters the trainer saw.
'\\n' is a user-defined piece (never merged, never unknown), which is why lines can be trained
without their newline and still every newline of a document survives encoding.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import sys
from typing import Any

import sentencepiece as spm

from data_prep.config import TokenizerConfig
from data_prep.errors import TokenizerError
from data_prep.manifest import sha256_file

NEWLINE = "\n"


def cut_line(line: str, max_bytes: int) -> list[str]:
    """`line` as pieces of at most max_bytes (UTF-8), cut at character boundaries."""
    if len(line) * 4 <= max_bytes:  # cannot exceed: a character is at most 4 bytes
        return [line]
    data = line.encode("utf-8")
    pieces, start = [], 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never cut inside a character
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


class SentenceSampler:
    """A uniform sample of `size` training sentences (reservoir sampling; 0 = keep all), seeded.

    A sentence is a non-empty line of a document, or a piece of a line longer than max_bytes.
    """

    def __init__(self, size: int, max_bytes: int, seed: int, track_characters: bool = False):
        self.size, self.max_bytes = size, max_bytes
        self._rng = random.Random(seed)
        self.sentences: list[str] = []
        self.sentences_total = 0
        self.characters_total = 0  # characters that could be trained on (all but line endings)
        self.lines_cut = 0  # lines longer than max_bytes, cut into pieces instead of dropped
        self.characters: set[str] | None = set() if track_characters else None  # every character of the text

    def add(self, text: str) -> None:
        if self.characters is not None:
            self.characters.update(text)
        for line in text.split(NEWLINE):
            line = line.rstrip("\r")  # SentencePiece strips a line's trailing CRs itself; count what it keeps
            if not line:
                continue
            pieces = cut_line(line, self.max_bytes)
            self.lines_cut += len(pieces) > 1
            for piece in pieces:
                self._offer(piece)

    def _offer(self, sentence: str) -> None:
        self.characters_total += len(sentence)
        n = self.sentences_total
        self.sentences_total += 1
        if self.size == 0 or n < self.size:
            self.sentences.append(sentence)
        else:
            j = self._rng.randrange(n + 1)
            if j < self.size:
                self.sentences[j] = sentence

    def report(self) -> dict[str, Any]:
        sampled_chars = sum(map(len, self.sentences))
        return {
            "sentences_total": self.sentences_total,
            "sentences_sampled": len(self.sentences),
            "characters_total": self.characters_total,
            "characters_sampled": sampled_chars,
            "fraction_seen": sampled_chars / self.characters_total if self.characters_total else 0.0,
            "max_sentence_length": self.max_bytes,
            "lines_cut_to_fit": self.lines_cut,
        }


def trainer_options(cfg: TokenizerConfig, characters: set[str] | None = None) -> dict[str, Any]:
    """SentencePiece flags: lossless text handling plus the config's choices.

    `characters` (char models): every character of the train split, all made pieces even when the
    sample or SentencePiece's line handling (it drops trailing CRs) would miss some.
    """
    char = cfg.model_type == "char"
    # ' ' becomes '▁' and '\n' is user-defined: neither may be listed as a required character
    required = "".join(sorted((characters or set()) - {NEWLINE, " "} - set(cfg.user_defined_symbols)))
    return dict(
        required_chars=required if char else "",
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size if cfg.vocab_size is not None else 1 << 20,
        hard_vocab_limit=cfg.vocab_size is not None,  # char with vocab_size null: every character seen
        character_coverage=1.0 if char else cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        split_digits=cfg.split_digits,
        user_defined_symbols=[NEWLINE] + [s for s in cfg.user_defined_symbols if s != NEWLINE],
        pad_id=cfg.pad_id,
        unk_id=cfg.unk_id,
        bos_id=cfg.bos_id,
        eos_id=cfg.eos_id,
        # keep the text exactly: no NFKC, keep runs of spaces, no invented leading space
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,  # indentation in code becomes pieces
        input_sentence_size=0,  # we sample ourselves, so we know what the trainer saw
        shuffle_input_sentence=False,
        max_sentence_length=cfg.max_sentence_length,
        num_threads=cfg.num_threads,
        minloglevel=0,  # the INFO lines go to the log file; we read the counts back from it
    )


@contextlib.contextmanager
def _stderr_to(path: str):
    """Sends file descriptor 2 (where SentencePiece's C++ logs go) to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def train(cfg: TokenizerConfig, sampler: SentenceSampler, model_path: str, log_path: str, seed: int) -> dict[str, Any]:
    """Trains on the sampled sentences, writes `model_path`, returns the training report for the manifest."""
    if not sampler.sentences:
        raise TokenizerError("the train split holds no text to train a tokenizer on; check the sources and split.val_fraction")
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    try:
        with _stderr_to(log_path):
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sampler.sentences), model_writer=writer,
                                           **trainer_options(cfg, sampler.characters))
    except RuntimeError as e:
        hint = ""
        if m := re.search(r"value <= (\d+)", str(e)):
            hint = f" The sample supports at most tokenizer.vocab_size={m[1]}; lower it or add text."
        elif m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e)):
            hint = (f" The text needs {m[1]} pieces for its characters and specials; raise tokenizer.vocab_size "
                    "above that or lower tokenizer.character_coverage.")
        raise TokenizerError(f"SentencePiece could not train the tokenizer: {str(e).rstrip('.')}.{hint} (log: {log_path})") from None
    with open(model_path, "wb") as f:
        f.write(writer.getvalue())
    report = sampler.report()
    report["trainer_log"] = _read_trainer_log(log_path)
    return report


def _read_trainer_log(path: str) -> dict[str, int | None]:
    """Counts SentencePiece reports about its own input, as a cross-check of ours (None when absent).

    Its character count treats a literal special piece in the text ("<s>") as one character.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        log = f.read()

    def find(pattern: str) -> int | None:
        m = re.search(pattern, log)
        return int(m[1]) if m else None

    return {
        "sentences_loaded": find(r"Loaded all (\d+) sentences"),
        "sentences_skipped_too_long": find(r"Skipped (\d+) too long sentences") or 0,
        "characters_counted": find(r"all chars count=(\d+)"),
    }


def install_existing(cfg: TokenizerConfig, model_path: str) -> dict[str, Any]:
    """Copies an existing SentencePiece model into the dataset; checks it can end documents."""
    try:
        sp = spm.SentencePieceProcessor(model_file=cfg.path)
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"tokenizer.path {cfg.path!r} is not a SentencePiece model ({e})") from None
    if sp.eos_id() < 0:
        raise TokenizerError(f"tokenizer.path {cfg.path!r} has no EOS piece; records must end with EOS. Use a model trained with eos_id >= 0")
    if cfg.add_bos and sp.bos_id() < 0:
        raise TokenizerError(f"tokenizer.add_bos is true but {cfg.path!r} has no BOS piece; set tokenizer.add_bos=false")
    shutil.copyfile(cfg.path, model_path)
    return {"existing_model": cfg.path}


def add_pieces(model_path: str, pieces: list[str]) -> list[str]:
    """Appends the `pieces` the model lacks as user-defined pieces (always one token, never split or
    merged); every existing piece keeps its id, so text without them encodes exactly as before.
    Rewrites `model_path` and returns the pieces added, in id order."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    have = {p.piece for p in proto.pieces}
    added = [p for p in dict.fromkeys(pieces) if p not in have]
    for piece in added:
        new = proto.pieces.add()
        new.piece, new.score, new.type = piece, 0.0, sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    if added:
        with open(model_path, "wb") as f:
            f.write(proto.SerializeToString())
    return added


def describe(model_path: str) -> dict[str, Any]:
    """The manifest's `tokenizer` block for a model file in the dataset folder."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    return {
        "path": os.path.basename(model_path),
        "sha256": sha256_file(model_path),
        "vocab_size": sp.vocab_size(),
        "model_type": _model_type(model_path),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "pad_id": sp.pad_id(),
        "unk_id": sp.unk_id(),
    }


def _model_type(model_path: str) -> str:
    try:  # the model file is a protobuf; reading it needs the optional protobuf package
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        return "unknown"
    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
