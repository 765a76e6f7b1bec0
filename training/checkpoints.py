"""The training side of the family contract: checkpoint files and what `train` / `load_checkpoint` return.

Every family's `training/<f>/train.py` provides (families/registry.py lists them):
- `train(config, out_dir, data=None, *, log=print) -> TrainResult`: `data` is a dataset folder in the real
  format, or None for the family's synthetic generator;
- `load_checkpoint(path) -> Checkpoint`: the eval-mode model and what export needs besides its weights;
- `main(argv=None)`: the `python -m training.<f>.train` CLI.

Checkpoints are written atomically (a crash mid-save leaves the previous file, never a truncated one) and carry
the family's name, which `read_checkpoint` checks before anything else is read.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from families.storage import atomic_write_bytes

FAMILY_KEY = "family"


class CheckpointError(ValueError):
    """The file is not a checkpoint of the family asked for (or not one at all)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: `model` in eval mode on the CPU, its `config`, and `extras` (the rest of the file
    that export needs: scaler, normalisation statistics, class names, training metrics...)."""

    family: str
    path: Path
    model: torch.nn.Module
    config: Any
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced: the checkpoint to export and a summary (metrics, timings, paths)."""

    best_checkpoint: Path
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` through a temporary file + fsync + rename; returns `path`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def save_checkpoint(family: str, payload: Mapping[str, Any], path: Path) -> Path:
    """`payload` tagged with its family, written atomically."""
    return save_atomic({**payload, FAMILY_KEY: family}, path)


def read_checkpoint(path: Path, family: str, legacy: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """The raw checkpoint dict, refused unless it is `family`'s. Files written before checkpoints carried their
    family are accepted when `legacy(payload)` recognises them (by the keys they always had)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(payload).__name__})")
    tagged = payload.get(FAMILY_KEY)
    if tagged == family or (tagged is None and legacy is not None and legacy(payload)):
        return payload
    raise CheckpointError(f"{path}: not a {family} checkpoint"
                          + (f" (it is a {tagged} checkpoint)" if tagged else " (no family tag)"))
