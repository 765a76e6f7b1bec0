"""Export: one ONNX graph with masks as inputs; parity on several patterns, batch sizes and visible counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.core import ExportError, publish
from export.families.water import plan_from_checkpoint
from families.manifest import Manifest
from families.water.contract import Preprocessing
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES
from service.runtimes import open_runtime
from training.water.default import SHIPPED
from training.water.model import patchify, select, take, to_tokens
from training.water.train import FitResult


def test_manifest_signature_and_parity(water_repository: Path) -> None:
    version_dir = water_repository / "water" / "1"
    manifest = Manifest.read(version_dir)
    assert manifest.family == "water" and manifest.task == "reconstruct"
    graph = manifest.primary
    onnx.checker.check_model(onnx.load(str(version_dir / graph.file)), full_check=True)
    inputs = {t.name: t for t in graph.inputs}
    assert inputs["precip"].shape == [-1, 5, 20, 20] and inputs["precip_mask"].datatype == "BOOL"
    assert inputs["precip_mask"].shape == [-1, 5, 2, 2] and inputs["evap_mask"].shape == [-1, 20]
    assert [o.name for o in graph.outputs] == [f"{m}_out" for m in MODALITIES]
    assert graph.parity is not None and graph.parity.passed and graph.parity.batch_sizes == [2, 1, 3, 5]
    pre = manifest.preprocessing
    assert pre["grid"] == {"height": 20, "width": 20, "patch": 10, "frames": 5, "series_len": 20, "n_static": 11}
    assert set(pre["stats"]["mean"]) == set(MODALITIES)
    assert manifest.preprocessing_as(Preprocessing).model_dump(mode="json") == pre  # the layout round-trips


def test_onnx_matches_visible_only_model_for_new_patterns(water_repository: Path,
                                                           water_trained: tuple[FitResult, Path]) -> None:
    """Patterns not seen at export time, different visible counts per row: the ONNX graph equals the
    training-time model that encodes only the gathered visible tokens."""
    model = water_trained[0].model
    cfg = model.cfg
    version_dir = water_repository / "water" / "1"
    manifest = Manifest.read(version_dir)
    runtime = open_runtime(version_dir, manifest.primary, "cpu")
    rng = np.random.default_rng(5)
    for batch in (1, 4, 7):
        shapes = {m: (batch, 5, 20, 20) if m in IMAGE_MODALITIES else (batch, 20) for m in MODALITIES}
        fields = {m: rng.standard_normal(shapes[m]).astype(np.float32) for m in MODALITIES}
        static = rng.standard_normal((batch, 11)).astype(np.float32)
        ratios = np.linspace(0.1, 0.95, batch)[:, None]
        masks = {m: rng.random((batch, 20)) < ratios for m in MODALITIES}
        masks = {m: v.reshape(batch, 5, 2, 2) if m in IMAGE_MODALITIES else v for m, v in masks.items()}
        got = runtime.run({**fields, "static": static, **{f"{m}_mask": masks[m] for m in MODALITIES}})
        tokens = to_tokens(cfg, {m: torch.from_numpy(v) for m, v in fields.items()})
        hidden = {m: torch.from_numpy(masks[m].reshape(batch, -1)) for m in MODALITIES}
        vis = {m: select(~hidden[m]) for m in MODALITIES}
        query = {m: select(hidden[m]) for m in MODALITIES}
        with torch.no_grad():
            pred = model(tokens, torch.from_numpy(static), {m: v[0] for m, v in vis.items()},
                         {m: v[1] for m, v in vis.items()}, {m: q[0] for m, q in query.items()},
                         {m: q[1] for m, q in query.items()})
        for m in MODALITIES:
            out = torch.from_numpy(got[f"{m}_out"])
            out_tok = patchify(out, cfg.patch) if m in IMAGE_MODALITIES else out[:, :, None]
            keep = ~query[m][1]
            np.testing.assert_allclose(take(out_tok, query[m][0])[keep].numpy(), pred[m][keep].numpy(),
                                       atol=1e-4, rtol=1e-3)
            vis_keep = ~vis[m][1]
            assert torch.equal(take(out_tok, vis[m][0])[vis_keep], take(tokens[m], vis[m][0])[vis_keep])


def test_torchscript_export(tmp_path: Path, water_trained: tuple[FitResult, Path]) -> None:
    version_dir = publish(plan_from_checkpoint(water_trained[1], {"format": "torchscript"}), tmp_path,
                          name="water_ts")
    manifest = Manifest.read(version_dir)
    assert manifest.primary.format == "torchscript" and manifest.primary.parity.passed


def test_unknown_options_are_refused(water_trained: tuple[FitResult, Path]) -> None:
    with pytest.raises(ExportError, match="colour"):
        plan_from_checkpoint(water_trained[1], {"colour": "blue"})
    with pytest.raises(ExportError, match="format"):
        plan_from_checkpoint(water_trained[1], {"format": "tflite"})


def test_shipped_checkpoint_plans_the_manifest_layout_of_older_exports() -> None:
    """The committed default predates drift statistics: its section has no `training_statistics` key (not
    a null), like the manifests exported from it so far; it parses back with the contract."""
    section = plan_from_checkpoint(SHIPPED).preprocessing.model_dump(mode="json")
    assert list(section) == ["grid", "image_modalities", "vector_modalities", "static_names", "units", "stats",
                             "prior_fill"]
    assert Preprocessing.model_validate(section).grid.height == 40
