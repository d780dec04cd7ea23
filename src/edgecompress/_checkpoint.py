"""Training checkpoints that resume exactly, and refuse to resume the wrong run.

A checkpoint is written atomically at the end of each epoch and holds the model, optimizer and
scheduler states, every random generator the next epoch draws from (Python, NumPy, torch, CUDA,
and the loaders' own shuffling/augmentation generators: the loader position), the best-on-val
record, and a fingerprint of the run (the training options and the model's parameter shapes).
Resuming restores all of it, so an interrupted run ends with the same weights as an
uninterrupted one; a checkpoint whose fingerprint differs is refused, naming what differs.
Everything is plain tensors and numbers, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ._io import atomic_path
from .data.bundle import _generators
from .errors import ConfigError

CHECKPOINT_VERSION = 2
# options that change the trajectory of training; the others (checkpoint path, device, best-on-
# val, patience) may differ between the interrupted run and its resumption
_FINGERPRINT_EXCLUDE = {"checkpoint", "device", "best_on_val", "patience", "amp"}


def fingerprint(cfg: Any, model: nn.Module, desc: str) -> dict[str, Any]:
    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if f.name not in _FINGERPRINT_EXCLUDE and isinstance(getattr(cfg, f.name),
                                                                  (int, float, str, bool,
                                                                   type(None)))}
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()
              if isinstance(t, torch.Tensor)}
    return {"desc": desc, "options": options, "shapes": shapes}


def rng_state(loaders: Iterable[Any]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(), "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "loaders": [gen.get_state() for loader in loaders if loader is not None
                    for gen in _generators(loader)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loaders: Iterable[Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    gens = [gen for loader in loaders if loader is not None for gen in _generators(loader)]
    for gen, saved in zip(gens, state["loaders"]):
        gen.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)


def load_checkpoint(path: str | Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path`` if it was written by this same run (else ConfigError)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise ConfigError(f"checkpoint {path} cannot be read as a tensors-only checkpoint "
                          f"({str(exc)[:200]}); delete it to start afresh") from exc
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {path} was written by another edgecompress version "
                          f"(no exact-resume record); delete it to start afresh")
    found = payload.get("fingerprint") or {}
    problems = _differences(found, expected)
    if problems:
        raise ConfigError(f"checkpoint {path} belongs to a different training run ("
                          f"{'; '.join(problems[:4])}); refusing to resume from it. Delete it, or "
                          f"give this run another checkpoint path")
    return payload


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = []
    if found.get("desc") != expected["desc"]:
        problems.append(f"it was written by '{found.get('desc')}', this is '{expected['desc']}'")
    for key, want in expected["options"].items():
        have = (found.get("options") or {}).get(key)
        if have != want:
            problems.append(f"{key} was {have!r}, now {want!r}")
    have_shapes, want_shapes = found.get("shapes") or {}, expected["shapes"]
    for name in sorted(set(have_shapes) | set(want_shapes)):
        if have_shapes.get(name) != want_shapes.get(name):
            problems.append(f"parameter {name} has shape {have_shapes.get(name)} in the "
                            f"checkpoint and {want_shapes.get(name)} in the model")
            break
    return problems
