"""Training on synthetic METR-LA: beats both baselines, checkpoints, JSON logs, resume, evaluation CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.checkpoints import CheckpointError, TrainResult, save_atomic
from training.traffic import evaluate
from training.traffic.config import TrafficConfig, load_config
from training.traffic.train import LEGACY_FORMAT, load_checkpoint, train


def test_short_training_beats_both_baselines(traffic_run: TrainResult) -> None:
    test = traffic_run.summary["test"]
    model, last, history = (test[k]["average"]["mae"] for k in ("model", "last_value", "historical_average"))
    assert model < last and model < history, test
    # the residual start is the last value: training must have improved on it at the long horizon
    assert test["model"]["horizon_12"]["mae"] < test["last_value"]["horizon_12"]["mae"]


def test_run_writes_checkpoints_and_logs(traffic_run: TrainResult) -> None:
    out = traffic_run.out_dir
    assert traffic_run.best_checkpoint == out / "best.pt"
    assert {"best.pt", "latest.pt", "metrics.jsonl", "metrics.json", "config.json"} <= {p.name for p in out.iterdir()}
    summary = traffic_run.summary
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(summary))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, summary["epochs"] + 1))
    assert {"train_mae", "val_mae", "val_rmse", "val_mape", "train_seconds"} <= set(records[0])
    best = torch.load(out / "best.pt", weights_only=False)
    assert best["family"] == "traffic"
    assert best["best_epoch"] == summary["best_epoch"]
    assert best["best_val_mae"] == min(r["val_mae"] for r in records)
    assert best["metrics"]["test"]["model"] == summary["test"]["model"]
    assert len(best["sensor_ids"]) == 12 and set(best["scaler"]) == {"mean", "std"}
    # config.json and the checkpoint record the config the model was built with (sensor count from the data)
    recorded = TrafficConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert recorded == TrafficConfig.from_dict(best["config"]) and recorded.model.num_nodes == 12


def test_load_checkpoint_returns_the_model_its_config_and_what_export_needs(traffic_run: TrainResult,
                                                                            tmp_path: Path) -> None:
    loaded = load_checkpoint(traffic_run.best_checkpoint)
    assert loaded.family == "traffic" and not loaded.model.training
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert loaded.config.name == "tiny" and loaded.config.data.nodes == 12 and loaded.config.model.num_nodes == 12
    assert {"sensor_ids", "scaler", "features", "step_seconds", "data", "metrics"} <= set(loaded.extras)
    assert not {"state_dict", "optimizer", "torch_rng"} & set(loaded.extras)
    # written before checkpoints carried their family: recognised by the format tag they always had
    payload = torch.load(traffic_run.best_checkpoint, weights_only=False)
    del payload["family"]
    save_atomic({**payload, "format": LEGACY_FORMAT}, tmp_path / "legacy.pt")
    assert load_checkpoint(tmp_path / "legacy.pt").extras["sensor_ids"] == loaded.extras["sensor_ids"]
    save_atomic({**payload, "format": "weld-embedding/1"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a traffic checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_resume_continues_exactly(tmp_path: Path) -> None:
    config = load_config("tiny")
    config.train = replace(config.train, max_batches_per_epoch=3, max_eval_batches=1, epochs=2)
    straight = train(config, tmp_path / "straight", log=None).summary
    train(replace(config, train=replace(config.train, epochs=1)), tmp_path / "resumed", log=None)
    # a run from before train_state.pt existed resumes from its latest.pt
    shutil.copytree(tmp_path / "resumed", tmp_path / "legacy", ignore=shutil.ignore_patterns("train_state.pt"))
    a = torch.load(tmp_path / "straight" / "latest.pt", weights_only=False)["state_dict"]
    for run in ("resumed", "legacy"):
        resumed = train(replace(config, train=replace(config.train, resume=True)), tmp_path / run, log=None).summary
        assert resumed["epochs"] == 2
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        b = torch.load(tmp_path / run / "latest.pt", weights_only=False)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{run} run diverged from the uninterrupted one"
        assert straight["best_val_mae"] == resumed["best_val_mae"]


def test_evaluate_cli_writes_the_metric_table(traffic_run: TrainResult, tmp_path: Path, capsys) -> None:
    out = tmp_path / "table.json"
    evaluate.main(["--checkpoint", str(traffic_run.best_checkpoint), "--out", str(out)])
    table = json.loads(out.read_text())
    assert set(table["metrics"]) == {"model", "last_value", "historical_average"}
    assert set(table["metrics"]["model"]) == {"horizon_3", "horizon_6", "horizon_12", "average"}
    # the same data regenerated from the checkpoint's spec gives the training run's numbers
    mae = traffic_run.summary["test"]["model"]["average"]["mae"]
    assert abs(table["metrics"]["model"]["average"]["mae"] - mae) < 1e-4
    assert "historical_average" in capsys.readouterr().out


def test_cli_has_one_flag_per_ablation_axis() -> None:
    from training.traffic.train import config_from_args, parse_args

    args = parse_args(["--config", "quick", "--out", "runs/x", "--num-stages", "4", "--patch-sizes", "1,2",
                       "--cross-stage-attention", "off", "--deep-supervision", "off", "--share-stage-params", "on",
                       "--skip-connections", "concat", "--spatial-encoding", "batched", "--data-dir", "data/METR-LA",
                       "--resume"])
    config = config_from_args(args)
    expected = {"num_stages": 4, "patch_sizes": [1, 2], "cross_stage_attention": False, "deep_supervision": False,
                "share_stage_params": True, "skip_connections": "concat", "spatial_encoding": "batched"}
    assert {k: getattr(config.model, k) for k in expected} == expected
    assert config.model.d_model == 96  # untouched preset values stay
    assert config.data.source == "files" and config.data.dir == "data/METR-LA" and config.train.resume


def test_presets_load_as_typed_configs(tmp_path: Path) -> None:
    tiny = load_config("tiny")
    assert tiny.name == "tiny" and tiny.model.d_model == 16 and tiny.model.patch_sizes == [1, 2]
    assert tiny.data.nodes == 12 and tiny.train.epochs == 3 and tiny.train.eval_batch_size == 64  # default
    custom = tmp_path / "mine.yaml"
    custom.write_text("train:\n  epochs: 7\n")
    assert load_config(custom).train.epochs == 7 and load_config(custom).name == "mine"
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config("nope")
    custom.write_text("train:\n  epoch: 7\n")
    with pytest.raises(ValueError, match="unknown train config keys"):
        load_config(custom)
