"""Setting up a round: which systems take part (models or response files), which prompts, every
response (generated once, up front), and the items, written to the store in one go.

Everything a user gave is read and checked before any model is loaded. A round is identified by a
fingerprint of its setup, so serving the same database again with the same arguments resumes it,
and different arguments fail instead of mixing two rounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

from jaxlm.humaneval.assign import build_items
from jaxlm.humaneval.errors import HumanEvalError
from jaxlm.humaneval.inputs import Prompt, read_prompts, read_responses
from jaxlm.humaneval.store import Store


@dataclasses.dataclass(frozen=True)
class Source:
    name: Optional[str]  # None for a --responses file: its rows name the systems
    path: str
    kind: str  # "workdir" | "hf" | "responses"


def source_of(path: str, name: Optional[str] = None, many: bool = False) -> Source:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.yaml")):
            kind = "workdir"
        elif os.path.isfile(os.path.join(path, "config.json")):
            kind = "hf"
        else:
            raise HumanEvalError(f"{path!r} is neither a training workdir (config.yaml) nor a transformers "
                                 "folder (config.json)")
        if many:
            raise HumanEvalError(f"--responses takes a JSON lines file, not the folder {path!r}")
    elif os.path.isfile(path):
        kind = "responses"
    else:
        raise HumanEvalError(f"system {path!r} does not exist; give a workdir, a transformers folder or a "
                             "responses file")
    if name is None and not many:
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return Source(name, path, kind)


def parse_sources(a: Optional[str], b: Optional[str], named: Sequence[str], responses: Sequence[str]) -> list[Source]:
    sources = [source_of(p) for p in (a, b) if p]
    for spec in named:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HumanEvalError(f"--system takes NAME=PATH, got {spec!r}")
        sources.append(source_of(path, name))
    sources += [source_of(p, many=True) for p in responses]
    return sources


def _sha256(path: str) -> str:
    with open(path, "rb") as f:  # prompt and response files are small
        return hashlib.sha256(f.read()).hexdigest()


def fingerprint(sources: Sequence[Source], prompts_path: Optional[str], round_settings: dict) -> str:
    """What makes a round this round: its sources (files by content), prompts and settings."""
    desc = dict(settings=round_settings,
                prompts=_sha256(prompts_path) if prompts_path else None,
                sources=[(s.name, os.path.abspath(s.path), s.kind, _sha256(s.path) if s.kind == "responses" else None)
                         for s in sources])
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _file_systems(sources: Sequence[Source]) -> tuple[dict[str, dict[str, list[str]]], list[Prompt], dict[str, str]]:
    """Responses of every file source by system, the first file's prompts, and each system's origin."""
    responses, origin, first_prompts = {}, {}, []
    for s in sources:
        if s.kind != "responses":
            continue
        per_system, prompts = read_responses(s.path)
        first_prompts = first_prompts or prompts
        if s.name is not None:  # a file given for one system: its rows must all be one system's
            if len(per_system) > 1:
                raise HumanEvalError(f"{s.path!r} holds responses of several systems ({', '.join(sorted(per_system))}); "
                                     "give it with --responses")
            per_system = {s.name: next(iter(per_system.values()))}
        for name, texts in per_system.items():
            if name in responses:
                raise HumanEvalError(f"two systems are called {name!r}; name them apart with --system NAME=PATH")
            responses[name], origin[name] = texts, s.path
    return responses, first_prompts, origin


def open_round(store: Store, sources: Sequence[Source], prompts_path: Optional[str], samples: int,
               overlap: float, seed: int, sampling: dict, batch_size: int = 8) -> bool:
    """Resumes the round the store holds when it has this setup (False), or creates it (True): reads
    and checks everything, generates the models' responses, and writes the round. `sampling` holds
    jaxlm.eval.generate.SamplingConfig's fields for the model systems."""
    models = [s for s in sources if s.kind != "responses"]
    settings = dict(samples=samples, overlap=overlap, seed=seed, sampling=dict(sampling) if models else None)
    mark = fingerprint(sources, prompts_path, settings)
    if store.has_round():
        if store.settings()["fingerprint"] != mark:
            raise HumanEvalError(f"{store.path!r} holds a round with another setup (systems, prompts or settings); "
                                 "serve it without setup arguments to resume it, or give a new --db")
        return False
    if samples < 1:
        raise HumanEvalError(f"--samples must be at least 1, got {samples}")
    if not 0 <= overlap <= 1:
        raise HumanEvalError(f"--overlap is a share of the items between 0 and 1, got {overlap}")
    from_files, file_prompts, origin = _file_systems(sources)
    if prompts_path:
        prompts = read_prompts(prompts_path)
    elif file_prompts:
        prompts = file_prompts
    else:
        raise HumanEvalError("give the prompts: --prompts FILE (or a responses file to take them from)")
    names = [s.name for s in models] + list(from_files)
    for name in names:
        if names.count(name) > 1:
            raise HumanEvalError(f"two systems are called {name!r}; name them apart with --system NAME=PATH")
    if len(names) < 2:
        raise HumanEvalError(f"a round compares at least two systems; got {len(names)} ({', '.join(names)})")
    for name, texts in from_files.items():
        short = [p for p in prompts if len(texts.get(p.key, ())) < samples]
        if short:
            raise HumanEvalError(f"system {name!r} ({origin[name]}) lacks {samples} response(s) for {len(short)} of "
                                 f"{len(prompts)} prompts, e.g. {short[0].text[:80]!r}")
    if models:
        from jaxlm.humaneval import responses as model_responses  # imports JAX: only when a model generates
        sampling = model_responses.sampling_config(**sampling)
        if samples > 1 and sampling.temperature == 0:
            raise HumanEvalError("--samples above 1 with --temperature 0 gives the same response every time; "
                                 "sample with a temperature above 0")
    responses = {name: [texts[p.key][:samples] for p in prompts] for name, texts in from_files.items()}
    for s in models:
        responses[s.name] = model_responses.generate(s.name, s.path, s.kind, prompts, samples, sampling, batch_size)
        origin[s.name] = s.path
    systems = [(name, origin[name]) for name in names]
    items = build_items(len(prompts), samples, len(systems), overlap, seed)
    store.create_round(systems, [(p.text, list(p.messages) if p.messages else None) for p in prompts],
                       responses, items, dict(settings, fingerprint=mark))
    return True
