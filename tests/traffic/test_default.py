"""The shipped traffic default: the research preset's checkpoint, what its manifest records, the CPU fallback
and the CPU bf16 training step the research run used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from export.families.traffic import plan_from_checkpoint
from training.checkpoints import CheckpointError
from training.traffic.config import load_config
from training.traffic.default import SHIPPED, build_default, ship
from training.traffic.model import TrafficForecaster
from training.traffic.train import load_checkpoint, training_step

pytestmark = pytest.mark.skipif(not SHIPPED.exists(), reason="models/traffic/traffic-research.pt is not checked out")


def test_default_is_the_shipped_research_model(tmp_path: Path) -> None:
    assert build_default(tmp_path) == SHIPPED
    loaded = load_checkpoint(SHIPPED)
    research = load_config("research").model
    cfg = loaded.model.cfg
    assert (cfg.d_model, cfg.num_stages, cfg.temporal_layers, cfg.spatial_layers, cfg.predict_residual) == (
        research.d_model, research.num_stages, research.temporal_layers, research.spatial_layers, True)
    assert SHIPPED.stat().st_size <= 20 * 2**20
    assert "optimizer" not in torch.load(SHIPPED, map_location="cpu", weights_only=False)


def test_manifest_records_size_and_test_table() -> None:
    provenance = plan_from_checkpoint(SHIPPED).provenance
    assert provenance["num_parameters"] >= 1_000_000
    tables = provenance["metrics"]["test"]
    assert provenance["metrics"]["test_windows"] == 2011  # the whole synthetic test split
    ratio = tables["model"]["average"]["mae"] / tables["last_value"]["average"]["mae"]
    assert provenance["test_mae_vs_last_value"] == pytest.approx(ratio, abs=1e-4)
    assert ratio <= 0.7  # issue 15 target
    # beats last value at every reported horizon and both baselines on average
    for horizon in ("horizon_3", "horizon_6", "horizon_12", "average"):
        assert tables["model"][horizon]["mae"] < tables["last_value"][horizon]["mae"]
    assert tables["model"]["average"]["mae"] < tables["historical_average"]["average"]["mae"]


def test_ship_drops_the_optimizer_and_refuses_other_families(tmp_path: Path) -> None:
    shipped = ship(SHIPPED, tmp_path / "again.pt")
    assert load_checkpoint(shipped).extras["num_parameters"] == load_checkpoint(SHIPPED).extras["num_parameters"]
    codec = Path(__file__).resolve().parents[2] / "models" / "imagecodec" / "imagecodec-q2.pt"
    with pytest.raises(CheckpointError, match="not a traffic checkpoint"):
        ship(codec, tmp_path / "codec.pt")


def test_bf16_autocast_training_step_on_cpu() -> None:
    config = load_config("tiny")
    cfg = replace(config.for_data(12, use_time_of_day=True, use_day_of_week=False), dropout=0.0)
    torch.manual_seed(0)
    model = TrafficForecaster(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 12, 12, 2)
    x[..., 1] = torch.rand(4, 12, 12)
    y = 40 + 20 * torch.rand(4, 12, 12, 1)
    before = [p.detach().clone() for p in model.parameters()]
    out = training_step(model, optimizer, x, y, amp=True, grad_clip=5.0)
    assert out.dtype == torch.float32 and out.shape == (4, 12, 12, 1) and torch.isfinite(out).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
