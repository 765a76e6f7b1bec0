"""Weld checkpoint files: what `train` writes and `load_checkpoint` reads (export, evaluation and the service's
gallery builder read them through here, so evaluate.py and train.py need not import each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from families.weld.classes import CLASSES
from training.checkpoints import Checkpoint, read_checkpoint
from training.weld.config import WeldConfig
from training.weld.model import WeldEmbeddingModel, build_model

FAMILY = "weld"
CHECKPOINT_FORMAT = "weld-embedding/1"  # what untagged checkpoints (before the family tag) are recognised by
BEST, LATEST = "best.pt", "latest.pt"


def checkpoint_payload(model: WeldEmbeddingModel, config: WeldConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The model, its config and class names, plus `extra` (epoch, val_supcon, optimizer); `save_checkpoint`
    adds the family tag."""
    return {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "labels": list(CLASSES),
            "state_dict": model.state_dict(), **extra}


def load_checkpoint(path: Path) -> Checkpoint:
    """The model (eval mode, CPU), its `WeldConfig`, and in `extras` the rest of the file (epoch, val_supcon)."""
    payload = read_checkpoint(path, FAMILY, legacy=lambda p: p.get("format") == CHECKPOINT_FORMAT)
    config = WeldConfig.from_dict(payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    extras = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "config")}
    return Checkpoint(family=FAMILY, path=Path(path), model=model.eval(), config=config, extras=extras)
