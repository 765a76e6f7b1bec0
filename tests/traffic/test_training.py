"""Training on synthetic METR-LA: beats both baselines, checkpoints, JSON logs, resume, evaluation CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from training.traffic import evaluate
from training.traffic.train import load_config, train


def test_short_training_beats_both_baselines(traffic_run: dict[str, Any]) -> None:
    test = traffic_run["test"]
    model, last, history = (test[k]["average"]["mae"] for k in ("model", "last_value", "historical_average"))
    assert model < last and model < history, test
    # the residual start is the last value: training must have improved on it at the long horizon
    assert test["model"]["horizon_12"]["mae"] < test["last_value"]["horizon_12"]["mae"]


def test_run_writes_checkpoints_and_logs(traffic_run: dict[str, Any]) -> None:
    out = Path(traffic_run["best_checkpoint"]).parent
    assert {"best.pt", "latest.pt", "metrics.jsonl", "metrics.json", "config.json"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, traffic_run["epochs"] + 1))
    assert {"train_mae", "val_mae", "val_rmse", "val_mape", "train_seconds"} <= set(records[0])
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["best_epoch"] == traffic_run["best_epoch"]
    assert best["best_val_mae"] == min(r["val_mae"] for r in records)
    assert best["metrics"]["test"]["model"] == traffic_run["test"]["model"]
    assert len(best["sensor_ids"]) == 12 and set(best["scaler"]) == {"mean", "std"}


def test_resume_continues_exactly(tmp_path: Path) -> None:
    config = load_config("tiny")
    config["train"].update(max_batches_per_epoch=3, max_eval_batches=1, epochs=2)
    straight = train(config, tmp_path / "straight", log=False)
    config["train"]["epochs"] = 1
    train(config, tmp_path / "resumed", log=False)
    config["train"]["epochs"] = 2
    resumed = train(config, tmp_path / "resumed", resume=True, log=False)
    assert resumed["epochs"] == 2
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "latest.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    assert straight["best_val_mae"] == resumed["best_val_mae"]


def test_evaluate_cli_writes_the_metric_table(traffic_run: dict[str, Any], tmp_path: Path, capsys) -> None:
    out = tmp_path / "table.json"
    evaluate.main(["--checkpoint", traffic_run["best_checkpoint"], "--out", str(out)])
    table = json.loads(out.read_text())
    assert set(table["metrics"]) == {"model", "last_value", "historical_average"}
    assert set(table["metrics"]["model"]) == {"horizon_3", "horizon_6", "horizon_12", "average"}
    # the same data regenerated from the checkpoint's spec gives the training run's numbers
    assert abs(table["metrics"]["model"]["average"]["mae"] - traffic_run["test"]["model"]["average"]["mae"]) < 1e-4
    assert "historical_average" in capsys.readouterr().out


def test_cli_has_one_flag_per_ablation_axis() -> None:
    from training.traffic.train import config_from_args, parse_args

    args = parse_args(["--config", "quick", "--out", "runs/x", "--num-stages", "4", "--patch-sizes", "1,2",
                       "--cross-stage-attention", "off", "--deep-supervision", "off", "--share-stage-params", "on",
                       "--skip-connections", "concat", "--spatial-encoding", "batched", "--data-dir", "data/METR-LA"])
    config = config_from_args(args)
    expected = {"num_stages": 4, "patch_sizes": [1, 2], "cross_stage_attention": False, "deep_supervision": False,
                "share_stage_params": True, "skip_connections": "concat", "spatial_encoding": "batched"}
    assert {k: config["model"][k] for k in expected} == expected
    assert config["model"]["d_model"] == 96  # untouched preset values stay
    assert config["data"]["source"] == "files" and config["data"]["dir"] == "data/METR-LA"
