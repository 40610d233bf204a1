"""Hugging Face `transformers` checkpoints <-> jaxlm parameters, driven by `keymap`'s tables.

    export_hf(model_cfg, params, out_dir)   -> config.json + model.safetensors (LlamaForCausalLM
                                               for llama, GPT2LMHeadModel for gpt2; LoRA merged)
    load_hf(hf_dir) -> (ModelConfig, params) a local checkpoint of those two classes
    warm_start_params(model_cfg, hf_dir)    -> params for a run whose config must match the checkpoint

Only safetensors files are read (never pickled `pytorch_model.bin`), so neither direction needs
torch. Weights are written in float32 unless asked otherwise.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.interop import keymap
from jaxlm.model import Transformer
from jaxlm.model.vocab import grow_rows
from jaxlm.model.lora import merge_lora, without_lora


class InteropError(ValueError):
    """A checkpoint cannot be converted; the message says what does not fit and what to do."""


ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def expected_shapes(cfg: ModelConfig) -> dict:
    """The params pure dict (nested, of ShapeDtypeStructs) a jaxlm model of this config has."""

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        out.update(_flatten(v, path) if isinstance(v, dict) else {path: v})
    return out


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def check_params(cfg: ModelConfig, params: dict, what: str = "the parameters") -> None:
    """Raises InteropError unless `params` has exactly the tree and shapes a `cfg` model has."""
    want, got = _flatten(expected_shapes(cfg)), _flatten(params)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise InteropError(
            f"{what} do not belong to a {cfg.family} model: missing {missing[:4]}, unexpected {extra[:4]}. "
            "Is the checkpoint of another model family (gpt2 vs llama) or embedding tying?")
    for path, spec in want.items():
        if tuple(got[path].shape) != tuple(spec.shape):
            hint = (f" The vocabulary differs ({got[path].shape[0]} vs model.vocab_size={cfg.vocab_size})."
                    if path == "embed" else "")
            raise InteropError(f"{what}: {path} has shape {tuple(got[path].shape)}, the config makes "
                               f"{tuple(spec.shape)}.{hint} Use the config the checkpoint was trained with.")


# ----------------------------------------------------------------------------------------------
# Config translation


def hf_config(cfg: ModelConfig, *, bos_id: Optional[int] = None, eos_id: Optional[int | list[int]] = None,
              pad_id: Optional[int] = None, dtype: str = "float32") -> dict:
    """config.json for a jaxlm model; raises InteropError for what the HF class cannot express."""
    n, kv, h = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    if cfg.reward_head:
        raise InteropError("model.reward_head=true (a reward model's scalar head) has no equivalent in "
                           "LlamaForCausalLM/GPT2LMHeadModel; such a model cannot be exported")
    if cfg.qk_norm:
        raise InteropError("model.qk_norm=true has no equivalent in LlamaForCausalLM/GPT2LMHeadModel; "
                           "such a model cannot be exported")
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=bos_id,
                  eos_token_id=eos_id, pad_token_id=pad_id, torch_dtype=dtype, dtype=dtype)
    if cfg.family == "llama":
        return dict(architectures=[ARCHITECTURES["llama"]], model_type="llama", hidden_size=cfg.d_model,
                    intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers, num_attention_heads=n,
                    num_key_value_heads=kv, head_dim=h, max_position_embeddings=cfg.max_seq_len,
                    rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                    rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                    hidden_act="silu", attention_bias=False, mlp_bias=False, **common)
    if kv != n or h * n != cfg.d_model:
        raise InteropError("GPT2LMHeadModel needs n_kv_heads == n_heads and head_dim == d_model / n_heads; "
                           f"this gpt2-family model has n_heads={n}, n_kv_heads={kv}, head_dim={h}")
    return dict(architectures=[ARCHITECTURES["gpt2"]], model_type="gpt2", n_embd=cfg.d_model,
                n_layer=cfg.n_layers, n_head=n, n_inner=cfg.d_ff, n_positions=cfg.max_seq_len,
                n_ctx=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
                scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, **common)


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """The jaxlm ModelConfig of a LlamaForCausalLM / GPT2LMHeadModel config.json."""
    kind = hf.get("model_type")

    def need(cond: bool, what: str):
        if not cond:
            raise InteropError(f"{where}: {what}; jaxlm imports plain LlamaForCausalLM and GPT2LMHeadModel only")

    if kind == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        need(rope.get("rope_type", rope.get("type", "default")) == "default",
             f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported")
        need(not hf.get("attention_bias", False), "attention_bias=true is not supported")
        need(not hf.get("mlp_bias", False), "mlp_bias=true is not supported")
        need(hf.get("hidden_act", "silu") == "silu", f"hidden_act={hf.get('hidden_act')!r} is not silu")
        n = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n
        return ModelConfig(
            family="llama", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=n, n_kv_heads=hf.get("num_key_value_heads") or n,
            head_dim=head_dim, d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    if kind == "gpt2":
        need(hf.get("activation_function", "gelu_new") in _GELU_TANH,
             f"activation_function={hf.get('activation_function')!r} is not the tanh GELU")
        need(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
        need(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
        d = hf["n_embd"]
        return ModelConfig(
            family="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    raise InteropError(f"{where}: model_type {kind!r} is not supported; jaxlm imports 'llama' and 'gpt2' checkpoints")


# ----------------------------------------------------------------------------------------------
# Tensors


def to_hf_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """HF state dict (numpy, the params' dtype) of a jaxlm params dict, by the family's table."""
    check_params(cfg, params)
    flat = {k: np.asarray(jax.device_get(v)) for k, v in _flatten(params).items()}
    out = {}
    for row in keymap.table(cfg.family, cfg.tie_embeddings):
        layers = range(cfg.n_layers) if row.per_layer else [None]
        for i in layers:
            arrays = [flat[p] if i is None else flat[p][i] for p in row.jax]
            out[row.hf.format(i=i)] = np.ascontiguousarray(keymap.to_hf(row.layout, arrays, row.n_in))
    return out


# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def from_hf_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], where: str) -> dict:
    """jaxlm params (float32 numpy, nested dict) from an HF state dict, by the family's table."""
    if cfg.family == "gpt2" and "wte.weight" in tensors:  # the original GPT-2 files lack the prefix
        tensors = {f"transformer.{k}" if not k.startswith("lm_head") else k: v for k, v in tensors.items()}
    shapes = {k: tuple(v.shape) for k, v in _flatten(expected_shapes(cfg)).items()}
    used, flat = set(), {}
    for row in keymap.table(cfg.family, cfg.tie_embeddings):
        per_layer = []
        for i in range(cfg.n_layers) if row.per_layer else [None]:
            key = row.hf.format(i=i)
            if key not in tensors:
                raise InteropError(f"{where} has no tensor {key!r}; it is not a complete {ARCHITECTURES[cfg.family]} checkpoint")
            used.add(key)
            target = [shapes[p][1:] if row.per_layer else shapes[p] for p in row.jax]
            x = np.asarray(tensors[key], np.float32)
            try:
                per_layer.append(keymap.from_hf(row.layout, x, target))
            except ValueError:
                raise InteropError(f"{where}: {key} has shape {x.shape}, which does not fit config.json "
                                   f"(expected parts {target})") from None
        for j, path in enumerate(row.jax):
            parts = [arrays[j] for arrays in per_layer]
            flat[path] = np.stack(parts) if row.per_layer else parts[0]
    if cfg.tie_embeddings:
        used.add("lm_head.weight")  # a tied checkpoint may store the shared matrix twice
    extra = sorted(k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if extra:
        raise InteropError(f"{where} has tensors jaxlm does not know: {extra[:5]}; is it a plain "
                           f"{ARCHITECTURES[cfg.family]} checkpoint?")
    return _unflatten(flat)


# ----------------------------------------------------------------------------------------------
# Files


def export_hf(cfg: ModelConfig, params: dict, out_dir: str, *, bos_id: Optional[int] = None,
              eos_id: Optional[int | list[int]] = None, pad_id: Optional[int] = None, dtype: str = "float32") -> list[str]:
    """Writes config.json, generation_config.json and model.safetensors; returns the files written.
    eos_id may list several ids (a chat model stops at its end-of-turn token or at EOS). LoRA
    adapters are merged into their weights first: the folder holds a plain model."""
    from safetensors.numpy import save_file

    params, cfg = merge_lora(params, cfg), without_lora(cfg)

    if dtype not in ("float32", "float16"):  # numpy has no bfloat16; float32 converts exactly to it later
        raise InteropError(f"export dtype must be float32 or float16, got {dtype!r}")
    config = hf_config(cfg, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, dtype=dtype)
    tensors = {k: v.astype(dtype) for k, v in to_hf_tensors(cfg, params).items()}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    weights = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, weights, metadata={"format": "pt"})
    # safetensors writes 0600; the weights get the mode of any file written here (the umask's)
    os.chmod(weights, stat.S_IMODE(os.stat(os.path.join(out_dir, "config.json")).st_mode))
    generation = {k: v for k, v in dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id).items()
                  if v is not None}
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)
    return ["config.json", "generation_config.json", "model.safetensors"]


def _read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise InteropError('reading a transformers checkpoint needs safetensors: pip install "jaxlm[hf]"') from None

    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    elif any(n.endswith(".bin") for n in os.listdir(hf_dir)):
        raise InteropError(f"{hf_dir} holds only PyTorch pickle weights (*.bin), which jaxlm never unpickles; "
                           "convert them once with transformers: "
                           "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    else:
        raise InteropError(f"{hf_dir} has no model.safetensors (or model.safetensors.index.json)")
    tensors = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        try:
            with safe_open(path, framework="flax") as f:  # "flax" reads bfloat16 too
                for key in f.keys():
                    tensors[key] = np.asarray(f.get_tensor(key).astype("float32"))
        except (OSError, ValueError, RuntimeError) as e:
            raise InteropError(f"{path} is not a readable safetensors file ({e})") from None
    return tensors


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise InteropError(f"{hf_dir!r} is not a directory; give a local transformers checkpoint folder")
    if not os.path.isfile(path):
        raise InteropError(f"{hf_dir!r} has no config.json; it is not a transformers checkpoint folder")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from None


def load_hf(hf_dir: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a local LlamaForCausalLM / GPT2LMHeadModel checkpoint folder.
    Params are float32 numpy arrays in jaxlm's tree (jax.device_put them where you need them)."""
    cfg = model_config_from_hf(read_hf_config(hf_dir), os.path.join(hf_dir, "config.json"))
    params = from_hf_tensors(cfg, _read_tensors(hf_dir), hf_dir)
    return cfg, params


# Fields a run's config must share with the checkpoint it starts from.
_ARCH_FIELDS = ("family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "tie_embeddings", "qk_norm", "norm_eps")


def warm_start_params(run_cfg: ModelConfig, hf_dir: str) -> dict:
    """Params for `run_cfg` from an HF checkpoint (continued pre-training), cast to run_cfg.param_dtype.

    The architecture fields must agree (both configs carry their derived defaults); for gpt2 the
    run's max_seq_len may be shorter than the checkpoint's position table, which is then cut.
    rope_theta may differ on purpose (context extension), so it is not checked.
    """
    hf_cfg, params = load_hf(hf_dir)
    return fit_params(run_cfg, hf_cfg, params, hf_dir)


def fit_params(run_cfg: ModelConfig, src_cfg: ModelConfig, params: dict, where: str, *,
               grow_vocab: bool = False) -> dict:
    """`params` of a model of `src_cfg` made to fit `run_cfg` (see warm_start_params). grow_vocab:
    the run may have more token rows than the source (tokens added for chat turns); the new rows
    start at the mean of the source's rows, the old ones unchanged."""
    wrong = []
    for name in _ARCH_FIELDS:
        mine, theirs = getattr(run_cfg, name), getattr(src_cfg, name)
        if name == "vocab_size" and grow_vocab and mine >= theirs:
            continue
        if mine != theirs:
            wrong.append(f"model.{name}={theirs} (the run has {mine})")
    if run_cfg.max_seq_len > src_cfg.max_seq_len and run_cfg.family == "gpt2":
        wrong.append(f"model.max_seq_len<={src_cfg.max_seq_len} (the checkpoint's position table; the run has "
                     f"{run_cfg.max_seq_len})")
    if wrong:
        raise InteropError(f"{where} does not fit this run's model; set " + ", ".join(wrong))
    params = dict(params)
    if run_cfg.family == "gpt2":
        params["pos_embed"] = params["pos_embed"][:run_cfg.max_seq_len]
    if run_cfg.vocab_size > src_cfg.vocab_size:
        params["embed"] = grow_rows(jnp.asarray(params["embed"]), run_cfg.vocab_size, src_cfg.vocab_size, axis=0)
        if "unembed" in params:
            params["unembed"] = grow_rows(jnp.asarray(params["unembed"]), run_cfg.vocab_size, src_cfg.vocab_size, axis=1)
    dtype = jnp.dtype(run_cfg.param_dtype)
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)

