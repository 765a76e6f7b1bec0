"""Dataset layout and policies, SupCon, the stratified sampler, the model, and a short real training run."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from families.weld.classes import CLASSES, match_class
from training.weld.config import full, small
from training.weld.data import (
    IncompleteReport,
    SampleRecord,
    WeldDataset,
    read_manifest,
    split_records,
)
from training.weld.evaluate import knn_metrics
from training.weld.losses import combined_loss, supcon_loss
from training.weld.model import build_model
from training.weld.sampler import StratifiedBatchSampler
from training.weld.synthetic import class_styles, write_sample
from training.weld.train import learning_rate

# ---- classes, manifest, incomplete samples ----------------------------------------------------------


@pytest.mark.parametrize("spelling, canonical", [
    ("good", "Good"), ("GOOD_WELD", "Good"), ("lack of fusion", "Lack_of_Fusion"), ("Burn Through", "Burnthrough"),
    ("porosity w excessive penetration", "Porosity_w_Excessive_Penetration"), ("crater-cracks", "Crater_Cracks"),
])
def test_category_names_match_case_and_space_insensitively(spelling: str, canonical: str) -> None:
    assert match_class(spelling) == canonical
    assert match_class("rust") is None
    assert len(CLASSES) == 12


def _layout(root: Path, rows: list[tuple[str, str, str]], drops: dict[str, str]) -> None:
    styles = class_styles()
    rng = np.random.default_rng(0)
    for category, subdir, _ in rows:
        label = CLASSES.index(match_class(category) or "Good")
        write_sample(root / subdir, Path(subdir).name, label, rng, styles, drop=drops.get(subdir))
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["CATEGORY", "SUBDIRS", "SPLIT"])
        writer.writerows(rows)


def test_incomplete_samples_are_reported_under_both_policies(tmp_path: Path) -> None:
    rows = [("good weld", "s1/p1", "TRAIN"), ("Porosity", "s1/p2", "TRAIN"), ("SPATTER", "s2/p3", "TRAIN"),
            ("Undercut", "s2/p4", "TRAIN"), ("slag", "s2/p5", "TRAIN")]
    _layout(tmp_path, rows, {"s1/p2": "audio", "s2/p3": "photos"})
    shutil.rmtree(tmp_path / "s2/p4/images")  # no photo at all
    report = IncompleteReport(policy="skip")
    records = read_manifest(tmp_path, report)
    assert [r.sample_id for r in records] == ["s1/p1", "s1/p2", "s2/p3", "s2/p4"]
    assert report.unknown_categories == {"slag": 1}
    params = small().preprocess

    skip = WeldDataset(records, params, policy="skip")
    assert skip.ids == ["s1/p1"]
    assert sorted(skip.report.skipped) == ["s1/p2", "s2/p3", "s2/p4"]
    assert any("audio" in p for p in skip.report.problems["s1/p2"])
    assert any("photos" in p for p in skip.report.problems["s2/p3"])

    filled = WeldDataset(records, params, policy="zero_fill")
    assert filled.ids == ["s1/p1", "s1/p2", "s2/p3", "s2/p4"]
    by_id = {s["id"]: s for s in filled.samples}
    assert by_id["s1/p2"]["mask"] == {"video": True, "photos": True, "audio": False, "sensors": True}
    assert np.all(by_id["s1/p2"]["audio"] == 0)
    assert np.all(by_id["s2/p3"]["photos"][3:] == 0) and np.any(by_id["s2/p3"]["photos"][:3] != 0)
    assert by_id["s2/p4"]["mask"]["photos"] is False
    assert sorted(filled.report.zero_filled) == ["s1/p2", "s2/p3", "s2/p4"]
    assert filled.report.to_dict()["used"] == 4


def test_splits_never_mix_train_and_test() -> None:
    def rec(i: int, label: int, split: str, sid: str | None = None) -> SampleRecord:
        return SampleRecord(sid or f"s/{i}", Path(f"/x/{i}"), label, split)

    records = [rec(i, i % 2, "TRAIN") for i in range(20)] + [rec(100 + i, i % 2, "TEST") for i in range(4)]
    splits = split_records(records, val_fraction=0.2, seed=0)
    assert len(splits["VAL"]) == 4 and len(splits["TRAIN"]) == 16 and len(splits["TEST"]) == 4
    assert not {r.sample_id for r in splits["VAL"]} & {r.sample_id for r in splits["TRAIN"]}
    with pytest.raises(ValueError, match="both TRAIN and TEST"):
        split_records(records + [rec(0, 0, "TEST", sid="s/0")], 0.2, 0)
    emb = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="train = test"):
        knn_metrics(emb, np.arange(4), emb, np.arange(4), 1, "cosine", ["a", "b", "c", "d"], ["a", "x", "y", "z"])


# ---- SupCon -------------------------------------------------------------------------------------------


def test_supcon_collapsed_single_class_batch_is_log_n_minus_1() -> None:
    emb = torch.ones(32, 16)
    loss = supcon_loss(emb, torch.zeros(32, dtype=torch.long), temperature=0.07)
    assert loss.item() == pytest.approx(math.log(31), abs=1e-5)  # 3.434, the constant seen in the log


def test_supcon_without_positives_is_finite_with_finite_gradients() -> None:
    emb = torch.randn(8, 16, requires_grad=True)
    loss = supcon_loss(emb, torch.arange(8), temperature=0.07)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    # Some anchors without a positive: they are left out, the rest are averaged; no NaN anywhere.
    emb2 = torch.randn(6, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    loss2 = supcon_loss(emb2, labels, 0.1)
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(emb2.grad).all()


def _supcon_reference(emb: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = z @ z.T / t
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        denom = np.log(sum(np.exp(sim[i, a]) for a in others))
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            losses.append(-np.mean([sim[i, p] - denom for p in pos]))
    return float(np.mean(losses))


def test_supcon_matches_a_loop_reference_and_ce_mix() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 8))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5])
    got = supcon_loss(torch.tensor(emb), torch.tensor(labels), 0.2).item()
    assert got == pytest.approx(_supcon_reference(emb, labels, 0.2), rel=1e-5)
    logits = torch.tensor(rng.normal(size=(12, 12)))
    mixed, parts = combined_loss(torch.tensor(emb), logits, torch.tensor(labels), 0.2, ce_weight=0.25)
    assert mixed.item() == pytest.approx(0.75 * parts["supcon"] + 0.25 * parts["ce"], rel=1e-6)


# ---- stratified sampler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [[10] * 12, [40, 2, 2, 3, 1, 1, 25], [2, 2], [5, 1, 1, 1, 9]])
def test_sampler_every_batch_has_two_classes_with_two_samples(counts: list[int]) -> None:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    sampler = StratifiedBatchSampler(labels, batch_size=12, classes_per_batch=4, seed=3)
    seen = set()
    for epoch in range(25):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert len(set(batch)) == len(batch), "a sample appears twice in one batch"
            per_class = np.bincount(np.asarray(labels)[batch])
            assert (per_class >= 2).sum() >= 2
            assert all(n == 0 or n >= 2 for n in per_class)
            seen.update(batch)
    eligible = {i for i, label in enumerate(labels) if counts[label] >= 2}
    assert eligible <= seen  # every usable sample gets drawn (class-balanced, so big classes take longer)


def test_sampler_refuses_data_without_two_usable_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        StratifiedBatchSampler([0, 0, 0, 1, 2], batch_size=8, classes_per_batch=2)
    with pytest.raises(ValueError):
        StratifiedBatchSampler([0, 0, 1, 1], batch_size=3, classes_per_batch=2)


# ---- schedule and model ----------------------------------------------------------------------------------


def test_warmup_then_cosine_schedule() -> None:
    cfg = full().train  # the spec's values: 1e-7 -> 1e-4 over 10 epochs, cosine to 1e-6
    assert learning_rate(0, cfg) == pytest.approx(1e-7)
    assert learning_rate(10, cfg) == pytest.approx(1e-4)
    assert learning_rate(5, cfg) == pytest.approx((1e-7 + 1e-4) / 2)
    assert learning_rate(cfg.epochs, cfg) == pytest.approx(1e-6)
    assert learning_rate(55, cfg) == pytest.approx((1e-4 + 1e-6) / 2)


def test_model_shapes_norm_freeze_and_attention() -> None:
    config = small()
    model = build_model(config, seed=0).eval()
    shapes = config.preprocess.shapes()
    inputs = [torch.randn(3, *shapes[m]) for m in ("video", "photos", "audio", "sensors")]
    with torch.no_grad():
        emb, maps = model(*inputs, return_attention=True)
    assert emb.shape == (3, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert set(maps) == {"video", "photos", "audio", "sensors"}
    assert maps["photos"].shape == (3, 8, 4, 5)  # 8 heads, 4 fusion tokens, 5 angle tokens
    model.freeze_backbones()
    frozen = [p.requires_grad for b in model.backbones() for p in b.parameters()]
    assert not any(frozen) and all(p.requires_grad for p in model.fusion.parameters())
    model.train()
    assert not model.video.backbone.training and model.fusion.training
    model.unfreeze_backbones()
    assert all(p.requires_grad for b in model.backbones() for p in b.parameters())


def test_encoder_geometry_pitfalls_are_caught() -> None:
    config = small()
    config.model.video_encoder["crop_size"] = 64  # RoPE grid would not match 32 px frames
    with pytest.raises(ValueError, match="crop_size"):
        build_model(config)
    config = small()
    config.model.audio_encoder["max_length"] = 128
    with pytest.raises(ValueError, match="max_length"):
        build_model(config)
    spec = full()  # never instantiated here: only its geometry
    assert spec.model.video_encoder["crop_size"] == spec.preprocess.video_size == 224
    assert spec.preprocess.video_frames == 32 and spec.model.freeze_backbones


# ---- a real (short) training run -----------------------------------------------------------------------


def test_training_run_writes_checkpoints_log_gallery_and_evaluation(weld_run: Path) -> None:
    assert {"latest.pt", "best.pt", "log.json", "gallery.npz", "eval.json", "data_report.json"} <= {
        p.name for p in weld_run.iterdir()}
    log = json.loads((weld_run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1] and all(math.isfinite(r["train_loss"]) for r in log)
    latest = torch.load(weld_run / "latest.pt", weights_only=False)
    assert latest["format"] == "weld-embedding/1" and "optimizer" in latest
    evaluation = json.loads((weld_run / "eval.json").read_text())
    trained = evaluation["trained"]
    assert trained["n_test"] == 24 and trained["n_train"] == 36 and trained["k"] == 5
    assert len(trained["confusion_matrix"]["matrix"]) == 12
    assert sum(map(sum, trained["confusion_matrix"]["matrix"])) == 24
    with np.load(weld_run / "gallery.npz") as gallery:
        assert gallery["embeddings"].shape == (36, 512) and len(set(gallery["ids"].tolist())) == 36


def test_encoders_load_from_a_local_pretrained_directory(tmp_path: Path) -> None:
    source = build_model(small(), seed=1)
    config = small()
    for name, module in (("video", source.video), ("photo", source.photos), ("audio", source.audio)):
        module.backbone.save_pretrained(tmp_path / name)
        setattr(config.model, f"{name}_pretrained", str(tmp_path / name))
    loaded = build_model(config, seed=2)  # a different seed: the weights must come from the directories
    for ours, theirs in zip(loaded.backbones(), source.backbones(), strict=True):
        for (key, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, msg=key)
    config.model.video_pretrained = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="hubs are never used"):
        build_model(config)
