"""Export: one ONNX graph with masks as inputs; parity on several patterns, batch sizes and visible counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from families.manifest import Manifest
from service.runtimes import open_runtime
from training.water.config import IMAGE_MODALITIES, MODALITIES
from training.water.model import patchify, select, take, to_tokens
from training.water.train import TrainResult


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


def test_onnx_matches_visible_only_model_for_new_patterns(water_repository: Path,
                                                           water_trained: tuple[TrainResult, Path]) -> None:
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


def test_torchscript_export(tmp_path: Path, water_trained: tuple[TrainResult, Path]) -> None:
    from export.core import publish
    from export.families.water import plan_from_checkpoint

    version_dir = publish(plan_from_checkpoint(water_trained[1], format="torchscript"), tmp_path, name="water_ts")
    manifest = Manifest.read(version_dir)
    assert manifest.primary.format == "torchscript" and manifest.primary.parity.passed
