"""What may change between a checkpoint and the run that resumes from it ("hot swap"), and how.

- Anything that leaves the parameter shapes alone may change: learning rate, schedule, optimizer
  hyper-parameters, dropout, batch size, data mixture, ... Every changed key is reported.
- The optimizer type (or a change that gives its state another structure) may change too; the
  new optimizer then starts from fresh moments (decided in checkpoint.py).
- Model shape and vocabulary may not: `check_model_fits` stops with the fields that differ.
- The data stream continues exactly when only the batch shape changed (the loader's position is a
  place in this process's token stream, which does not depend on the batch shape); for any other
  data change the position is derived (`loader_state_for`) and the derivation is reported.
"""

from __future__ import annotations

from typing import Any, Optional

from jaxlm.config import ConfigError

# Model fields that change numerics but never a parameter's shape: free to change on resume.
_NO_SHAPE_MODEL_FIELDS = {"embed_dropout", "attn_dropout", "resid_dropout", "dtype", "param_dtype", "remat",
                          "loss_chunk", "init", "init_std", "rope_theta", "norm_eps"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 3e-4, ...}; lists stay whole values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every config key that differs, sorted by key."""
    a, b = flatten(saved), flatten(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_model_fits(saved_config: dict, current_config: dict, saved_shapes: dict[str, tuple],
                     current_shapes: dict[str, tuple], where: str) -> None:
    """Raises ConfigError naming the model fields (or parameters) whose shapes differ."""
    if saved_shapes == current_shapes:
        return
    changed = [(k, old, new) for k, old, new in config_changes(saved_config.get("model", {}),
                                                                 current_config.get("model", {}))
               if k not in _NO_SHAPE_MODEL_FIELDS]
    if changed:
        what = "; ".join(f"model.{k} is {old!r} there and {new!r} here" for k, old, new in changed)
    else:  # same config, other code: name the parameters
        diff = sorted(set(saved_shapes) ^ set(current_shapes)) or sorted(
            k for k in saved_shapes if saved_shapes[k] != current_shapes.get(k))
        what = "parameters differ: " + ", ".join(
            f"{k} {saved_shapes.get(k, 'absent')} there, {current_shapes.get(k, 'absent')} here" for k in diff[:5])
    raise ConfigError(
        f"the checkpoint {where} holds a model of another shape, so this config cannot resume from it: {what}. "
        "Model shape and vocabulary are fixed for a run: set them back, or train from scratch in a new workdir.")


def loader_state_for(saved: dict[str, dict], fresh: dict, process_index: int,
                     process_count: int) -> tuple[dict, Optional[dict]]:
    """The state to give this process's loader, and None (exact continuation) or what was derived.

    saved: every process's loader state at save time, keyed by str(process index).
    fresh: `loader.get_state()` of the new loader before its first batch (gives the new setup).
    """
    setup = fresh["setup"]
    mine = saved.get(str(process_index))
    if mine is not None and mine.get("setup") == setup:
        return mine, None
    if not saved:
        return fresh, {"changed": ["no saved data state"], "how": "the data stream starts from its beginning"}
    old_setup = (mine or saved[min(saved, key=int)]).get("setup", {})
    changed = sorted(k for k in set(old_setup) | set(setup) if old_setup.get(k) != setup.get(k))
    if mine is not None and (set(changed) <= {"batch_rows"} or (
            set(changed) <= {"batch_rows", "seq_len"} and _document_place(mine["stream"]) is mine["stream"])):
        # The stream state counts documents/tokens (or rows), not batches: the same stream, cut
        # into batches of another shape, continues at exactly the next unseen token (or row).
        return {**mine, "setup": setup}, {"changed": changed, "how": "exact: the same data stream continues"}
    if old_setup.get("process_count") != setup.get("process_count"):
        # Each process read documents i, i+P, ...; spread the documents all of them had read over
        # the new processes. Documents near the boundary may be read twice or skipped.
        total = sum(int(_document_place(s["stream"])["position"]) for s in saved.values())
        place = {"position": total // int(setup["process_count"]), "offset": 0}
        how = (f"derived: {len(saved)} processes had read {total} documents; each of the "
               f"{setup['process_count']} processes starts at document {place['position']} of its share")
    elif set(changed) <= {"batch_rows", "seq_len", "shuffle_rows"}:
        # Same documents, other rows: start again at the beginning of the current row-shuffle window.
        place = dict(_document_place(mine["stream"]))
        how = (f"derived: continues at document {place['position']}, token {place['offset']} (the start of the "
               "current row-shuffle window: up to data.shuffle_rows rows are seen again)")
    else:
        # Other documents, mixture weights or seed: keep the count of documents this process has
        # consumed, so the run neither restarts its data nor jumps ahead.
        position = int(_document_place(mine["stream"])["position"]) if mine else 0
        place = {"position": position, "offset": 0}
        how = f"derived: the new data stream starts at document {position} (as many as were consumed before)"
    return {**fresh, "stream": _with_document_place(fresh["stream"], place)}, {"changed": changed, "how": how}


def _document_place(stream: dict) -> Optional[dict]:
    """The {"position", "offset"} (document index, tokens used) inside a loader's stream state."""
    if "position" in stream and "offset" in stream:
        return stream
    for value in stream.values():
        if isinstance(value, dict) and (found := _document_place(value)) is not None:
            return found
    return None


def _with_document_place(stream: dict, place: dict) -> dict:
    if "position" in stream and "offset" in stream:
        return {**stream, **place}
    return {k: _with_document_place(v, place) if isinstance(v, dict) and _document_place(v) is not None else v
            for k, v in stream.items()}
