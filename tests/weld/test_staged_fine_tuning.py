"""Issue 15 item 10 (a): staged fine-tuning. The backbones stay exactly as initialised for the first
`unfreeze_after` epochs while the rest trains, then change, at their own learning rate; log.json and the
checkpoint's config (the manifest's provenance) record it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoints import read_checkpoint
from training.threads import torch_threads
from training.weld.config import small
from training.weld.model import build_model
from training.weld.train import FAMILY, LATEST, main, train

BACKBONES = ("video.backbone.", "photos.backbone.", "audio.backbone.")


def _split(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    backbone = {k: v.clone() for k, v in state.items() if k.startswith(BACKBONES)}
    head = {k: v.clone() for k, v in state.items() if not k.startswith(BACKBONES) and v.is_floating_point()}
    return backbone, head


def _changed(a: dict, b: dict) -> int:
    return sum(not torch.equal(a[k], b[k]) for k in a)


def test_backbones_fixed_before_unfreeze_and_trained_after(weld_data: Path, tmp_path: Path) -> None:
    config = small()
    config.train.epochs = 3
    config.train.unfreeze_after = 2
    config.train.backbone_lr = 2e-4
    initial_backbone, initial_head = _split(build_model(config, seed=config.train.seed).state_dict())
    per_epoch: list[tuple[dict, dict]] = []

    def log(line: str) -> None:  # called after latest.pt of the epoch is written
        if line.startswith("[train] epoch") and "unfrozen" not in line:
            state = read_checkpoint(tmp_path / LATEST, FAMILY)["state_dict"]
            per_epoch.append(_split(state))

    with torch_threads(1):
        result = train(config, tmp_path, weld_data, log=log)
    assert len(per_epoch) == 3
    for epoch in (0, 1):  # frozen: every backbone tensor is its initial value; the head trains
        backbone, head = per_epoch[epoch]
        assert _changed(initial_backbone, backbone) == 0, epoch
        assert _changed(initial_head, head) > len(head) // 2, epoch
    backbone, _ = per_epoch[2]
    assert _changed(initial_backbone, backbone) > len(backbone) // 2  # unfrozen at epoch 2

    records = json.loads((tmp_path / "log.json").read_text())
    assert [r["backbones"] for r in records] == ["frozen", "frozen", "trainable"]
    for r in records:
        assert r["backbone_lr"] == pytest.approx(r["lr"] * 2e-4 / config.train.lr)
    assert result.summary["staged_fine_tuning"] == {"unfreeze_after": 2, "backbone_lr": 2e-4, "unfrozen": True}
    saved = read_checkpoint(tmp_path / "best.pt", FAMILY)["config"]["train"]
    assert saved["unfreeze_after"] == 2 and saved["backbone_lr"] == 2e-4


def test_cli_flags_set_the_staged_schedule(weld_data: Path, tmp_path: Path, capsys) -> None:
    with torch_threads(1):
        main(["--data", str(weld_data), "--out", str(tmp_path), "--epochs", "1", "--unfreeze-after", "1",
              "--backbone-lr", "3e-5"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["staged_fine_tuning"] == {"unfreeze_after": 1, "backbone_lr": 3e-5, "unfrozen": False}
    assert json.loads((tmp_path / "log.json").read_text())[0]["backbones"] == "frozen"
