"""Export CLI and publish: ONNX/TorchScript artifacts, checker, parity, manifest, atomic and immutable versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.core import ExportError, ExportPlan, GraphExport, publish
from families.manifest import Manifest
from service.runtimes import open_runtime

ROOT = Path(__file__).resolve().parents[2]


def test_cli_exports_a_checked_onnx_version_with_manifest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    result = subprocess.run(
        [sys.executable, "-m", "export", "tiny", "--checkpoint", str(tiny_checkpoint), "--repository",
         str(repository), "--option", "max_batch_size=16"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    version_dir = repository / "tiny" / "1"
    manifest = Manifest.read(version_dir)
    assert (manifest.name, manifest.version, manifest.family) == ("tiny", 1, "tiny")
    assert manifest.batching.max_batch_size == 16
    graph = manifest.primary
    assert graph.format == "onnx"
    assert graph.inputs[0].shape == [-1, 16] and [o.name for o in graph.outputs] == ["y", "norm"]
    assert graph.parity is not None and graph.parity.passed and graph.parity.max_abs_err < 1e-4
    assert graph.parity.batch_sizes == [2, 5]
    assert manifest.provenance["code_revision"] and manifest.provenance["training_config"]["hidden"] == 32

    model = onnx.load(str(version_dir / graph.file))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis

    # The next export of the same model gets the next version number.
    again = subprocess.run(
        [sys.executable, "-m", "export", "tiny", "--checkpoint", str(tiny_checkpoint), "--repository",
         str(repository)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0 and (repository / "tiny" / "2" / "manifest.json").is_file()


def test_torchscript_export_matches_eager(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from export.families.tiny import plan_from_checkpoint

    version_dir = publish(plan_from_checkpoint(tiny_checkpoint, {"format": "torchscript"}), tmp_path, "ts")
    manifest = Manifest.read(version_dir)
    assert manifest.primary.format == "torchscript" and (version_dir / "model.pt").is_file()
    runtime = open_runtime(version_dir, manifest.primary, "cpu")
    x = np.random.default_rng(1).standard_normal((7, 16)).astype(np.float32)
    onnx_dir = publish(plan_from_checkpoint(tiny_checkpoint), tmp_path, "onnx")
    reference = open_runtime(onnx_dir, Manifest.read(onnx_dir).primary, "cpu").run({"x": x})
    got = runtime.run({"x": x})
    np.testing.assert_allclose(got["y"], reference["y"], rtol=1e-4, atol=1e-5)


class BranchyModel(torch.nn.Module):
    """Data-dependent control flow: tracing bakes in one branch, so the export differs from eager."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x + 10


def test_parity_failure_writes_nothing(tmp_path: Path) -> None:
    samples = [{"x": torch.ones(2, 3)}, {"x": -torch.ones(3, 3)}]
    plan = ExportPlan(family="tiny", task="test",
                      graphs=[GraphExport(name="model", module=BranchyModel(), samples=samples, output_names=["y"])])
    with pytest.raises(ExportError, match="differs from the eager model"):
        publish(plan, tmp_path, "branchy")
    assert list((tmp_path / "branchy").iterdir()) == []  # no version, no staging leftovers


def test_versions_are_immutable(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from export.families.tiny import plan_from_checkpoint

    publish(plan_from_checkpoint(tiny_checkpoint), tmp_path, "tiny", version=3)
    before = (tmp_path / "tiny" / "3" / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        publish(plan_from_checkpoint(tiny_checkpoint), tmp_path, "tiny", version=3)
    assert (tmp_path / "tiny" / "3" / "manifest.json").read_bytes() == before


def test_assets_are_written_with_checksums(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from export.core import AssetFile
    from export.families.tiny import plan_from_checkpoint
    from families.manifest import sha256_file

    plan = plan_from_checkpoint(tiny_checkpoint)
    plan.assets["tables/labels.json"] = AssetFile(b'["a", "b"]', "label names")
    version_dir = publish(plan, tmp_path, "tiny")
    asset = Manifest.read(version_dir).assets["tables/labels.json"]
    assert asset.sha256 == sha256_file(version_dir / "tables/labels.json")


def test_unknown_or_malformed_options_are_refused_by_name(tiny_checkpoint: Path) -> None:
    from export.families.tiny import plan_from_checkpoint

    with pytest.raises(ExportError, match="colour"):
        plan_from_checkpoint(tiny_checkpoint, {"colour": "blue"})
    with pytest.raises(ExportError, match="format"):
        plan_from_checkpoint(tiny_checkpoint, {"format": "tflite"})


def test_a_checkpoint_of_another_family_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from training.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
    from training.tiny.train import load_checkpoint

    other = save_checkpoint("weld", {"state_dict": {}}, tmp_path / "weld.pt")
    with pytest.raises(CheckpointError, match="not a tiny checkpoint .it is a weld checkpoint"):
        load_checkpoint(other)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt", "tiny")
    assert load_checkpoint(tiny_checkpoint).family == "tiny"
