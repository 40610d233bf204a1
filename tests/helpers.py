"""The tests' shared helpers (no tests here); conftest.py makes fixtures of those worth sharing.

In order: paths; the one tiny config; documents and the one dataset writer; tokenizers and random
models; data_prep stages on hand-made texts; training on a chosen mesh; numbers and compiled HLO;
the one subprocess runner and the records a run leaves; online RL on the arithmetic task; the
humaneval server and browser.

JAX must see conftest.py's 8 fake CPU devices before it is first imported, so only conftest.py (or
a script that sets the same flags first) imports this module before JAX.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sentencepiece as spm
import yaml
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from flax import nnx

from data_prep import arithmetic, prepare
from data_prep.config import TokenizerConfig
from data_prep.config import config_from_dict as data_config
from data_prep.document import Document
from data_prep.sources import read_source, resolve_files
from data_prep.stages import StageStats, build_stage, counted
from data_prep.stages.runner import read_jsonl_shards
from data_prep.tokenizer import trainer_options
from jaxlm import main as jaxlm_main
from jaxlm import storage
from jaxlm.config import config_from_dict
from jaxlm.data import format as fmt
from jaxlm.data.chat import SPECIAL_TOKENS
from jaxlm.eval.tokenizer import Tokenizer
from jaxlm.model import Transformer
from jaxlm.parallel.mesh import build_mesh
from jaxlm.train import setup
from jaxlm.train.incidents import read_incidents
from jaxlm.train.state import build_optimizer, model_spec
from jaxlm.train.step import BATCH_KEYS

# ---------------------------------------------------------------------------------------------- paths

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
FIXTURES = os.path.join(TESTS, "fixtures")  # stand-in programs the tests run
GOLDEN_DIR = os.path.join(TESTS, "golden")  # numbers a test pins (golden/write_golden.py writes them)

# ----------------------------------------------------------------------------------------- the config


def tiny_config(family: str = "llama", *, seq_len: int = 16, dataset=None, typed: bool = True, **sections):
    """The tiny model every test trains or evaluates (2 layers, d_model 32, 4 heads, 2 KV heads for
    llama, a 96-token vocabulary, a context of max(32, seq_len)), with a short run around it: rows of
    `seq_len` tokens, one device, 20 steps of 8 rows, lr 1e-2 after 2 warm-up steps.

    dataset: a prepared dataset (or a folder holding a tokenizer), the run's one source.
    sections: overrides by config section, as a YAML file has them: a dict updates its section key by
    key (`model={"n_layers": 4}`) except `mesh`, which replaces the whole shape; None changes
    nothing; any other value is set as given (`workdir=...`).
    typed=False: the plain dict (to write as YAML) instead of the typed Config."""
    config = {
        "data": {"seq_len": seq_len, **({"sources": [{"path": str(dataset)}]} if dataset is not None else {})},
        "model": {"family": family, "vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4,
                  "n_kv_heads": 2 if family == "llama" else None, "max_seq_len": max(32, seq_len)},
        "mesh": {"data": 1},
        "train": {"steps": 20, "global_batch": 8},
        "optim": {"lr": 1e-2, "schedule": {"warmup_steps": 2}},
    }
    config = merge_sections(config, sections, replaced=("mesh",))
    return config_from_dict(config) if typed else config


def run_config(workdir, dataset, *, steps: int = 24, every: int = 4, **sections) -> dict:
    """tiny_config as a whole run (a dict, to write as YAML or build a Config from): 8 CPU devices
    (data=4, fsdp=2), logs every step, 2 eval batches every 6 steps, a checkpoint every `every`
    steps (the last 4 kept), no progress bar or TensorBoard. `sections` update it as in tiny_config,
    the mesh too."""
    run = {
        "workdir": str(workdir),
        "mesh": {"data": 4, "fsdp": 2},
        "train": {"steps": steps, "log_every": 1, "eval_every": 6, "eval_batches": 2, "peak_flops": 1e9},
        "log": {"progress": False, "tensorboard": False},
        "checkpoint": {"every_steps": every, "keep_last": 4, "every_minutes": 0},
    }
    return tiny_config(dataset=dataset, typed=False, **merge_sections(run, sections))


def golden_config(dataset, workdir, **sections):
    """The golden run (golden/tiny_losses.json pins its first ten losses): tiny_config over a
    64-token vocabulary in rows of 32, seed 0, on all 8 test devices, 30 steps under a cosine
    schedule (5 warm-up steps), logging every step, 4 eval batches every 15 steps, no progress bar.
    `sections` update it as in run_config; returns the typed Config."""
    golden = {
        "workdir": str(workdir),
        "seed": 0,
        "model": {"vocab_size": 64},
        "optim": {"schedule": {"name": "cosine", "warmup_steps": 5}},
        "train": {"steps": 30, "log_every": 1, "eval_every": 15, "eval_batches": 4},
        "mesh": {"data": -1},  # all 8 test devices
        "log": {"progress": False},
    }
    return tiny_config(seq_len=32, dataset=dataset, **merge_sections(golden, sections))


def merge_sections(config: dict, sections: dict, replaced=()) -> dict:
    """`config` updated by `sections`: a dict updates its section key by key (one level deep)
    unless the section is in `replaced`; None changes nothing; any other value is set as given."""
    config = dict(config)
    for section, values in sections.items():
        if values is None:
            continue
        if isinstance(values, dict) and section not in replaced:
            config[section] = {**config.get(section, {}), **values}
        else:
            config[section] = values
    return config


def read_jsonl(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def write_config(path, config: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return str(path)


# ---------------------------------------------------------------------------- documents and datasets

TOKENIZER_SHA = hashlib.sha256(b"test tokenizer").hexdigest()


def write_dataset(root, splits: dict, *, vocab_size: int = 1000, shards: int = 2, tokenizer_sha: str = TOKENIZER_SHA) -> str:
    """A prepared dataset written exactly as `jaxlm.data.format` specifies (the real writer is
    `python -m data_prep`; tests choose their token arrays instead). splits: {"train": [token
    arrays], "val": [...]}, each split's documents in order over `shards` files.

    Documents that are `fmt.MASKED_TOKEN` arrays make a "tokens_mask" dataset (instruction records)."""
    root = str(root)
    masked = any(getattr(d, "dtype", None) == fmt.MASKED_TOKEN for docs in splits.values() for d in docs)
    os.makedirs(os.path.join(root, fmt.SHARD_DIR), exist_ok=True)
    dtype = fmt.token_dtype(vocab_size)
    manifest_splits = {}
    for split, docs in splits.items():
        bounds = np.linspace(0, len(docs), shards + 1).astype(int)
        entries = []
        for i in range(shards):
            rel = fmt.shard_name(split, i, shards)
            path = os.path.join(root, rel)
            writer = ArrayRecordWriter(path, "group_size:1")
            part = docs[bounds[i] : bounds[i + 1]]
            for doc in part:
                writer.write(fmt.encode_masked_record(doc["token"], doc["mask"], dtype) if masked
                             else fmt.encode_record(doc, dtype))
            writer.close()
            with open(path, "rb") as f:
                data = f.read()
            entries.append({
                "path": rel,
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": len(part),
                "tokens": int(sum(len(d) for d in part)),
                "bytes": len(data),
            })
        manifest_splits[split] = {
            "documents": len(docs),
            "tokens": int(sum(len(d) for d in docs)),
            "shards": entries,
        }
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "record_kind": "tokens_mask" if masked else "tokens",
        "dtype": dtype.name,
        "tokenizer": {
            "path": fmt.TOKENIZER, "sha256": tokenizer_sha, "vocab_size": vocab_size,
            "model_type": "bpe", "bos_id": -1, "eos_id": 2, "pad_id": 0, "unk_id": 1,
        },
        "sources": [{"name": "test", "weight": 1.0}],
        "splits": manifest_splits,
        "stages": [],
        "compression": {},
    }
    with open(os.path.join(root, fmt.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return root


def random_docs(n: int, *, seed: int, low: int = 3, high: int = 1000, min_len: int = 1, max_len: int = 300, eos: int = 2) -> list:
    """n documents of min_len..max_len tokens, each ending in EOS; ids in [low, high) otherwise."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        doc = rng.integers(low, high, size=length)
        doc[-1] = eos
        docs.append(doc)
    return docs


def learnable_docs(n, vocab, seed):
    """Documents a tiny model learns in a few steps: each an arithmetic progression mod vocab
    (ids from 3), ending in EOS (2)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(5, 60))
        start, stride = int(rng.integers(3, vocab)), int(rng.integers(1, 4))
        docs.append(np.append((start + stride * np.arange(length)) % (vocab - 3) + 3, 2))
    return docs


def plus_seven_docs(n: int, seed: int, vocab: int = 96) -> list:
    """Documents a tiny model learns within a few steps: each token is the previous one plus 7
    (ids from 3), the last one EOS (2)."""
    rng = np.random.default_rng(seed)
    docs = []
    for length in rng.integers(8, 60, n):
        doc = 3 + (rng.integers(0, vocab - 3) + 7 * np.arange(length)) % (vocab - 3)
        doc[-1] = 2  # EOS
        docs.append(doc)
    return docs


def markov_docs(n, seed, vocab):
    """Each token has 4 equally likely successors: learnable, with the loss levelling off near
    log 4 rather than at 0 (what loss-spike tests need)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        x = [int(rng.integers(3, vocab))]
        for e in rng.integers(0, 4, int(rng.integers(100, 400))):
            x.append((5 * x[-1] + 1 + int(e)) % (vocab - 3) + 3)
        docs.append(np.array(x + [2]))
    return docs


def write_learnable_dataset(root) -> str:
    """learnable_docs over a 64-token vocabulary: the dataset of the golden losses and of the tests
    that train through the Trainer in-process (the `learnable_dataset` fixture)."""
    return write_dataset(root, {"train": learnable_docs(400, 64, 0), "val": learnable_docs(40, 64, 1)}, vocab_size=64)


def write_run_dataset(root, seed: int = 0, docs: int = 300) -> str:
    """plus_seven_docs over tiny_config's 96 tokens: the dataset of the subprocess runs."""
    return write_dataset(root, {"train": plus_seven_docs(docs, seed), "val": plus_seven_docs(20, seed + 1)},
                         vocab_size=96)


def write_markov_dataset(root, vocab: int = 64) -> str:
    """markov_docs: the dataset of the loss-spike runs."""
    return write_dataset(root, {"train": markov_docs(300, 0, vocab), "val": markov_docs(20, 1, vocab)},
                         vocab_size=vocab)


# ----------------------------------------------------------------------- tokenizers and random models

CORPUS = """The quick brown fox jumps over the lazy dog. A man is sitting on a roof.
She bends down and grabs the pole, then lifts the weight over her head.
Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day.
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
Question: Which statement best explains why photosynthesis is the foundation of most food webs?
Answer: Sunlight is the source of energy for nearly all ecosystems.
""" * 3

CHAT_TEXT = [
    "What does json.dumps do? Serialize obj to a JSON formatted str.",
    "The capital of France is Paris. Rivers flow into the sea.",
    ">>> import math\n>>> math.sqrt(16)\n4.0",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "def f(x):\n    return x * 2  # doubles x",
    "naïve café, 日本語 and emoji 😀 are text too.",
] * 20


def train_tokenizer(path, *, lines=None, chat_tokens: bool = True, vocab_size: int = 500, num_threads: Optional[int] = None) -> str:
    """Trains a BPE model in-process as data_prep trains them (identity normalisation, '\\n' a piece)
    on `lines` (default CHAT_TEXT's lines), with the chat tokens or without, and writes it to `path`.
    num_threads: default data_prep's (the trained model depends on it)."""
    threads = {} if num_threads is None else {"num_threads": num_threads}
    cfg = TokenizerConfig(vocab_size=vocab_size, user_defined_symbols=list(SPECIAL_TOKENS) if chat_tokens else [], **threads)
    if lines is None:
        lines = [line for t in CHAT_TEXT for line in t.split("\n")]
    writer = io.BytesIO()
    opts = trainer_options(cfg)
    opts["minloglevel"] = 2
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, **opts)
    with open(path, "wb") as f:
        f.write(writer.getvalue())
    return str(path)


def make_tokenizer_dir(path, vocab_size=360, add_bos=False) -> str:
    """A folder with a tokenizer.model trained on CORPUS and a manifest.json tokenizer block, like
    data_prep writes."""
    os.makedirs(path, exist_ok=True)
    train_tokenizer(os.path.join(path, "tokenizer.model"), lines=CORPUS.split("\n"), chat_tokens=False,
                    vocab_size=vocab_size, num_threads=1)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"tokenizer": {"add_bos": add_bos}}, f)
    return path


def random_model(family: str = "llama", *, vocab_size: int, seq_len: int = 64, dataset=None, seed: int = 0, **model):
    """A random tiny_config model for the eval, generation and export tests, with init_std 0.2 (its
    logits far from flat) and rows of `seq_len`; `model` overrides more of it. Returns (config,
    params)."""
    config = tiny_config(family, seq_len=seq_len, dataset=dataset,
                         model={"vocab_size": vocab_size, "init_std": 0.2, **model})
    return config, random_params(config.model, seed)[2]


def random_params(model_cfg, seed=0):
    model = Transformer(model_cfg, rngs=nnx.Rngs(seed))
    return model, nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model))


# ------------------------------------------------------------ data_prep: sources, stages and outputs


def docs_of(*texts, source="web"):
    return [Document(text=t, id=f"{source}/t.txt:{i}", source=source) for i, t in enumerate(texts)]


def run_stage(spec, docs):
    stage = build_stage(spec)
    stats = StageStats(stage.name)
    return list(counted(stage, docs, stats)), stats


def kept(spec, *texts):
    out, _ = run_stage(spec, docs_of(*texts))
    return [d.text for d in out]


def reason(spec, text):
    """The removal reason for one text, or None if it is kept."""
    out, stats = run_stage(spec, docs_of(text))
    if out:
        return None
    (r,) = stats.removed
    return r


def read_source_docs(src):
    """(documents, stats) of one source config read whole."""
    stats = StageStats("read")
    docs = list(read_source(src, resolve_files(src), stats))
    return docs, stats


def skipped(stats, rule):
    """(count, first places) of one skip rule."""
    return stats.removed.get(f"read:{rule}", 0), stats.examples.get(f"read:{rule}", [])


def repaired(stats, rule):
    return stats.counters.get(f"repaired:{rule}", 0), stats.examples.get(f"read:repaired:{rule}", [])


def decoded_records(manifest, out):
    """{split: the texts of its records} of a dataset data_prep wrote to `out`."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    dtype = np.dtype(manifest["dtype"])
    texts = {}
    for split in fmt.SPLITS:
        texts[split] = []
        for shard in manifest["splits"][split]["shards"]:
            reader = ArrayRecordReader(os.path.join(out, shard["path"]))
            texts[split] += [sp.decode(fmt.decode_record(r, dtype)[:-1].tolist()) for r in reader.read_all()]
            reader.close()
    return texts


def slow_jsonl_input(paths, delay, rank, world_size, stats):
    """A `read_input` that dawdles per task, so a test can kill a run part-way through."""
    time.sleep(delay)
    yield from read_jsonl_shards(paths, rank, world_size, stats)


# ---------------------------------------------------------------------------- training on a mesh


def synthetic_batches(steps, n_micro, rows, seq_len, vocab, seed=0):
    """Packed-looking batches: two documents per row, a loss mask that drops the border."""
    rng = np.random.default_rng(seed)
    half = seq_len // 2
    for _ in range(steps):
        start = rng.integers(0, vocab, (n_micro, rows, 1))  # learnable: each token determines the next
        tokens = (start + 7 * np.arange(seq_len + 1)) % vocab
        segments = np.ones((n_micro, rows, seq_len), np.int32)
        segments[..., half:] = 2
        positions = np.concatenate([np.arange(half), np.arange(seq_len - half)])
        positions = np.broadcast_to(positions, (n_micro, rows, seq_len))
        mask = np.ones((n_micro, rows, seq_len), np.int32)
        mask[..., half - 1] = 0
        yield dict(inputs=tokens[..., :-1], targets=tokens[..., 1:], segment_ids=segments,
                   positions=positions, loss_mask=mask)


class MeshRun(NamedTuple):
    losses: np.ndarray
    grad_norms: np.ndarray
    state: dict  # the final train state, as numpy
    hlo: Optional[str]  # the compiled step's text, when asked for


def train_on_mesh(config, batches, devices=None, optimizer=None, hlo=False, objective=None) -> MeshRun:
    """Trains on `batches` ((n_micro, rows, length) arrays) under config.mesh over `devices`
    (default all) with `optimizer` and `objective` (default the config's), set up as a run is."""
    run = setup.build(config, mesh=build_mesh(config.mesh, devices), optimizer=optimizer, objective=objective)
    state = run.init()
    losses, norms, text = [], [], None
    for batch in batches:
        batch = {k: jax.device_put(jnp.asarray(batch[k], jnp.int32), run.batch_sharding) for k in BATCH_KEYS}
        if hlo and text is None:
            text = run.train_step.lower(state, batch).compile().as_text()
        state, metrics = run.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return MeshRun(np.array(losses), np.array(norms), jax.device_get(state), text)


def run_steps(config, batches, devices=None):
    """Trains on `batches` under config.mesh; returns (losses, grad_norms, final params as numpy)."""
    run = train_on_mesh(config, batches, devices)
    return run.losses, run.grad_norms, run.state["params"]


def recording(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, whose state also keeps the gradients of the first step: (inner state, grads, count).

    The first step's gradients are the sharded computation's numerics alone; later ones also carry
    the trajectory, where Adam turns rounding-level gradients (e.g. of a key bias, whose true
    gradient is 0) into full-size steps."""
    def init(params):
        return inner.init(params), jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state[0], params)
        kept = jax.tree.map(lambda old, new: jnp.where(state[2] == 0, new, old), state[1], grads)
        return updates, (inner_state, kept, state[2] + 1)

    return optax.GradientTransformation(init, update)


def train_keeping_first_grads(config, batches, devices=None):
    """Trains on `batches` ((n_micro, rows, length) arrays) under config.mesh over `devices`
    (default all); returns (losses, grad norms, the first step's gradients), all numpy."""
    optimizer = recording(build_optimizer(config, model_spec(config)))
    run = train_on_mesh(config, batches, devices, optimizer)
    return run.losses, run.grad_norms, run.state["opt_state"][1]


# ---------------------------------------------------------------------------- numbers and HLO


def log_softmax64(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in the input's precision (float64 for the numpy references)."""
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def random_token_micro(rng: np.random.Generator, b: int, t: int, vocab: int, mask_share: float) -> dict:
    """One micro-batch of random token fields (int32 jax arrays): random inputs and targets, positions
    0..t-1, one segment, and a loss mask covering about `mask_share` of the tokens."""
    micro = {"inputs": rng.integers(0, vocab, (b, t)), "targets": rng.integers(0, vocab, (b, t)),
             "positions": np.tile(np.arange(t), (b, 1)), "segment_ids": np.ones((b, t), np.int32),
             "loss_mask": (rng.random((b, t)) < mask_share).astype(np.int32)}
    return {k: jnp.asarray(v, jnp.int32) for k, v in micro.items()}


def max_rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def tree_rel(a, b) -> float:
    """Largest difference of any entry, relative to the largest entry of the whole tree (entries
    whose true value is 0, like a key bias's gradient, differ at rounding level by design)."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert pairs and len(pairs) == len(jax.tree.leaves(b))
    scale = max(float(np.max(np.abs(x))) for x, _ in pairs)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs) / scale


_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def computations(hlo: str) -> dict:
    """Compiled HLO text -> {computation name: its instruction lines}."""
    out, name = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if m and line.rstrip().endswith("{"):
            name = m.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def branch_computations(hlo: str) -> set:
    """Names of the computations that conditionals choose between (lax.cond branches)."""
    names = set()
    for found in re.findall(r"branch_computations=\{([^}]*)\}", hlo):
        names.update(n.strip().lstrip("%") for n in found.split(","))
    return names


def collective_bytes(hlo: str, names=None) -> dict:
    """Bytes each kind of collective produces per device, in the computations `names` (default
    all) of compiled HLO text; a loop body counts once."""
    out = dict.fromkeys(COLLECTIVES, 0)
    for name, lines in computations(hlo).items():
        if names is not None and name not in names:
            continue
        for line in lines:
            m = re.search(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
            if not m:
                continue
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
                if dtype in _DTYPE_BYTES:
                    out[m.group(2)] += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return out


# ---------------------------------------------------------- the subprocess runner and a run's records


def subprocess_env(devices: Optional[int] = None, cache_dir=None, **extra) -> dict:
    """This environment for a child process: the checkout first on PYTHONPATH; with `devices`, that
    many CPU devices for JAX; with `cache_dir`, a persistent JAX compilation cache there (so only
    the first run of a config pays for compiling); `extra` variables on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if devices is not None:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.update(extra)
    return env


def run_python(*argv, timeout: float = 600, devices: Optional[int] = None, env=None, check: bool = False):
    """Runs `python ARGV...` in the checkout to its end (argv: e.g. "-m", "jaxlm.plan", ... or "-c",
    code) with subprocess_env(devices) (or `env`); returns the CompletedProcess with its exit
    status and its stdout and stderr as text."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=env or subprocess_env(devices),
                          capture_output=True, text=True, timeout=timeout, check=check)


def start(argv, log_path, *, devices: Optional[int] = None, cache_dir=None, env=None) -> subprocess.Popen:
    """Starts `python ARGV...` in the checkout (argv: e.g. ["-m", "jaxlm.main", ...] or a script and
    its arguments) with subprocess_env(devices, cache_dir) (or `env`); its output goes to
    `log_path`, named by `proc.log_path`."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO,
                                env=env or subprocess_env(devices, cache_dir), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = str(log_path)
    return proc


def tail_log(proc: subprocess.Popen, chars: int = 4000) -> str:
    with open(proc.log_path) as f:
        return f.read()[-chars:]


def start_training(config_path, cache_dir, *args: str, devices: int = 8) -> subprocess.Popen:
    """`python -m jaxlm.main --config C args...` as a user starts it, on `devices` CPU devices;
    its output goes to `proc.log_path`."""
    return start(["-m", "jaxlm.main", "--config", config_path, *args], f"{config_path}.{time.monotonic_ns()}.log",
                 devices=devices, cache_dir=cache_dir)


def run_training(config_path, cache_dir, *args: str, expect: int = 0, devices: int = 8) -> None:
    proc = start_training(config_path, cache_dir, *args, devices=devices)
    code = proc.wait(600)
    if code != expect:
        raise AssertionError(f"exit status {code}, expected {expect}:\n{tail_log(proc)}")


def uninterrupted_run(root, dataset, cache_dir, *, steps: int, every: int) -> tuple:
    """A tiny run from start to end in `root`/run: its workdir and losses (see `losses`)."""
    config = write_config(root / "config.yaml", run_config(root / "run", dataset, steps=steps, every=every))
    run_training(config, cache_dir)
    result = losses(root / "run")
    assert sorted(k for k in result if isinstance(k, int)) == list(range(1, steps + 1))
    return root / "run", result


def kill_and_resume(config_path, workdir, cache_dir, kill_after: int, steps: int, poll: float = 0.01) -> str:
    """Starts the run, SIGKILLs it once it has logged step `kill_after` (or later, before `steps`)
    and finished a checkpoint, and runs it again to the end, which must restore the newest
    checkpoint. Returns what the failure messages of the caller's checks should say."""
    proc = start_training(config_path, cache_dir)
    wait_until(lambda: last_step(workdir) >= kill_after and finished_checkpoints(workdir), proc, poll=poll)
    kill(proc)
    killed_at, saved = last_step(workdir), finished_checkpoints(workdir)
    assert killed_at < steps and saved, (killed_at, saved)
    run_training(config_path, cache_dir)
    restores = [i["step"] for i in incidents(workdir) if i["kind"] == "restore"]
    assert restores == [saved[-1]], f"killed after step {killed_at} with checkpoints {saved}"
    return f"killed after step {killed_at}, checkpoints {saved}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(config_path, cache_dir, count: int = 2, devices: int = 4) -> list[subprocess.Popen]:
    """`count` processes of one run on localhost (jax.distributed, gloo), `devices` CPU devices each."""
    coordinator = f"localhost:{free_port()}"
    return [start_training(config_path, cache_dir, "--coordinator", coordinator, "--num_processes", str(count),
                           "--process_id", str(i), devices=devices) for i in range(count)]


def run_processes(config_path, cache_dir, count: int = 2, devices: int = 4) -> None:
    procs = start_processes(config_path, cache_dir, count, devices)
    codes = [p.wait(600) for p in procs]
    if codes != [0] * count:
        raise AssertionError(f"exit statuses {codes}:\n" + "\n".join(tail_log(p) for p in procs))


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before the moment to kill it:\n"
                                 f"{tail_log(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(60)


def train_on_corpus(root, cache_dir) -> str:
    """A real 8-step training run (a subprocess) on CORPUS's lines, with make_tokenizer_dir's
    tokenizer in the dataset; returns its workdir."""
    tok = Tokenizer.from_dataset(make_tokenizer_dir(os.path.join(root, "tok")))
    docs = [np.array(tok.encode(line) + [tok.eos_id]) for line in CORPUS.split("\n") if line]
    data = write_dataset(os.path.join(root, "data"), {"train": docs * 4, "val": docs[:6]}, vocab_size=tok.vocab_size,
                         shards=1)
    shutil.copy(tok.model_file, os.path.join(data, "tokenizer.model"))
    workdir = os.path.join(root, "work")
    config = run_config(workdir, data, steps=8, every=4, mesh={"data": 8, "fsdp": 1},
                        data={"sources": [{"path": data}], "seq_len": 32}, model={"vocab_size": 384, "max_seq_len": 64})
    run_training(write_config(os.path.join(root, "c.yaml"), config), cache_dir)
    return workdir


def metrics(workdir) -> list[dict]:
    """The run's metrics.jsonl rows; the workdir may be local or on Cloud Storage."""
    path = storage.join(workdir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    lines = storage.read_text(path).split("\n")
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill
            pass
    return out


def losses(workdir) -> dict:
    """{step: loss} and {("val", step): val_loss}; a step logged twice (before a kill and after the
    resume) keeps its last value."""
    out = {}
    for m in metrics(workdir):
        if "loss" in m:
            out[m["step"]] = m["loss"]
        if "val_loss" in m:
            out[("val", m["step"])] = m["val_loss"]
    return out


def last_step(workdir) -> int:
    return max([m["step"] for m in metrics(workdir) if "loss" in m], default=0)


def finished_checkpoints(workdir) -> list[int]:
    """Committed checkpoint steps. Locally Orbax renames a finished one into place; on Cloud Storage
    (no rename) it writes into the step's folder and adds commit_success.txt last."""
    d = storage.join(workdir, "checkpoints")
    remote = storage.is_remote(d)
    return sorted(int(n) for n in storage.listdir(d)
                  if n.isdigit() and (not remote or storage.exists(storage.join(d, n, "commit_success.txt"))))


def incidents(workdir) -> list[dict]:
    return read_incidents(str(workdir))


# ------------------------------------------------------------------- online RL on the arithmetic task

RL_MODEL = {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 64,
            "max_seq_len": 128}


def digit_share(response: str, answer: str) -> float:
    """A reward with spread even for an untrained model: the share of the response's characters that
    are digits (the tests' verifier; the real task's is jaxlm.eval.verifiers:final_number)."""
    return sum(ch.isdigit() for ch in response) / max(len(response), 1)


def make_task(root) -> tuple[str, str]:
    """The shipped arithmetic task as a tiny instruction dataset: (the arithmetic items folder, the
    data_prep instruction dataset made from it)."""
    items = os.path.join(root, "arithmetic")
    assert arithmetic.main(["--out", items, "--train", "120", "--test", "12", "--seed", "1"]) == 0
    out = os.path.join(root, "arith_sft")
    sources = [{"name": "train", "type": "alpaca", "paths": [os.path.join(items, "train.jsonl")],
                "split": {"by": "hash", "val_fraction": 0.0}},
               {"name": "test", "type": "alpaca", "paths": [os.path.join(items, "test.jsonl")],
                "split": {"by": "hash", "val_fraction": 1.0}}]
    prepare(data_config({"output": out, "sources": sources, "tokenizer": {"vocab_size": 512, "num_threads": 1}, "workers": 1,
                         "chat": {"max_tokens": 128}}), log=lambda _: None)
    return items, out


def sft_config(workdir, dataset, steps: int = 2) -> dict:
    """The tiny SFT base's run on make_task's dataset (RL_MODEL, 8 devices)."""
    return {"workdir": str(workdir), "data": {"sources": [{"path": dataset}], "seq_len": 128},
            "model": dict(RL_MODEL), "mesh": {"data": 4, "fsdp": 2},
            "train": {"steps": steps, "global_batch": 8, "log_every": 1, "eval_every": 0, "peak_flops": 1e9},
            "optim": {"lr": 1e-2}, "log": {"progress": False, "tensorboard": False},
            "checkpoint": {"every_steps": steps, "every_minutes": 0}}


def train_base(root, dataset) -> str:
    """Trains the tiny SFT base in-process; returns its workdir."""
    workdir = os.path.join(root, "sft")
    jaxlm_main.train(config_from_dict(sft_config(workdir, dataset)))
    return workdir


def rl_config(workdir, base, items, dataset, *, steps: int = 4, every: int = 2, **rl) -> dict:
    """An online-RL (GRPO) run that starts from the SFT base, rewarded by digit_share."""
    return {"workdir": str(workdir), "init": {"from": base}, "data": {"sources": [{"path": dataset}], "seq_len": 96},
            "model": dict(RL_MODEL),
            "mesh": {"data": 4, "fsdp": 2},
            "train": {"objective": "policy_gradient", "steps": steps, "global_batch": 16, "micro_batch": 8,
                      "log_every": 1, "eval_every": 0, "peak_flops": 1e9},
            "optim": {"lr": 1e-3, "schedule": {"name": "constant"}},
            "log": {"progress": False, "tensorboard": False},
            "checkpoint": {"every_steps": every, "keep_last": 4, "every_minutes": 0},
            "rl": {"algorithm": "grpo", "prompts": os.path.join(items, "train.jsonl"), "group_size": 4,
                   "reward": {"verifier": "tests.helpers:digit_share"}, "max_new_tokens": 12,
                   "kl_coef": 0.1, **rl}}


# ------------------------------------------------------------------- the humaneval server and browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_missing():
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is absent (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:  # an optional dependency: the humaneval extra
        return "selenium is not installed (pip install selenium)"
    return None


def chromium(width=1280, height=900):
    """Debian's headless Chromium driven by Selenium through Debian's chromedriver (selenium-manager
    never runs)."""
    from selenium import webdriver  # an optional dependency: the humaneval extra
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.profile_dir = profile
    return driver


def close(driver):
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def get(url):
    """(status, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Server:
    """`python -m jaxlm.humaneval serve ARGS --port P` in a subprocess on a free localhost port;
    `links` are the URLs it printed."""

    def __init__(self, args, port, log_path, timeout=120.0):
        self.args, self.port, self.log_path = list(args), port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.start(timeout)

    def start(self, timeout=120.0):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "jaxlm.humaneval", "serve", *self.args,
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=subprocess_env(), cwd=REPO)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if get(self.base + "/")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.output()}")
            time.sleep(0.1)
        self.links = dict(re.findall(r"^(raters join at|results \(keep private\)|rater \S+): (\S+)$",
                                     self.output(), re.M))

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
