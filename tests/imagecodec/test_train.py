"""The codec's side of the family contract: config presets, `train` -> tagged checkpoint, `load_checkpoint`
(older untagged files too, other families' refused), export options validated by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.core import ExportError
from export.families.imagecodec import plan_from_checkpoint
from training.checkpoints import CheckpointError, save_checkpoint
from training.imagecodec.config import LAMBDAS, hpcm_base_config, load_config, tiny_config
from training.imagecodec.model import ImageCodec
from training.imagecodec.train import config_from_args, load_checkpoint, parse_args, train


def test_presets_and_cli_flags() -> None:
    assert load_config("tiny").model == tiny_config()
    assert load_config("hpcm_base").model == load_config("base").model == hpcm_base_config()
    with pytest.raises(ValueError, match="unknown imagecodec config"):
        load_config("huge")
    config = config_from_args(parse_args(["--out", "x", "--size", "tiny", "--phase", "baseline", "--quality", "5",
                                          "--steps", "7", "--seconds", "3", "--device", "cpu"]))
    assert (config.size, config.model.phase, config.quality, config.steps, config.seconds) == ("tiny", "baseline", 5,
                                                                                               7, 3.0)
    assert config.lambda_ == LAMBDAS[5] and config.model == tiny_config(phase="baseline")


def test_train_writes_a_tagged_checkpoint_that_loads(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(images / f"{i}.png")
    config = replace(load_config("tiny"), quality=2, steps=2, batch=1, crop=64, log_every=1)
    lines: list[str] = []
    result = train(config, tmp_path / "run", images, log=lines.append)
    assert result.best_checkpoint == tmp_path / "run" / "checkpoint.pt" and result.summary["steps"] == 2
    assert len(lines) == 2 and '"psnr"' in lines[0]
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.family == "imagecodec" and not loaded.model.training and loaded.config == config.model
    assert loaded.extras["quality"] == 2 and loaded.extras["lambda"] == LAMBDAS[2]
    assert loaded.extras["provenance"]["data"] == str(images)
    assert torch.load(result.best_checkpoint, weights_only=False)["family"] == "imagecodec"


def test_untagged_checkpoints_load_and_other_families_are_refused(tmp_path: Path) -> None:
    cfg = tiny_config()
    state = ImageCodec(cfg).state_dict()
    legacy = tmp_path / "legacy.pt"
    torch.save({"config": cfg.to_dict(), "state_dict": state}, legacy)  # before checkpoints carried a family
    loaded = load_checkpoint(legacy)
    assert loaded.extras["quality"] is None and loaded.extras["lambda"] is None
    other = save_checkpoint("weld", {"config": cfg.to_dict(), "state_dict": state}, tmp_path / "weld.pt")
    with pytest.raises(CheckpointError, match="it is a weld checkpoint"):
        load_checkpoint(other)
    foreign = tmp_path / "traffic.pt"
    torch.save({"config": {"model": {}}, "state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="no family tag"):
        load_checkpoint(foreign)


def test_unknown_or_malformed_export_options_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.pt"  # the options are checked before the checkpoint is read
    with pytest.raises(ExportError, match="colour"):
        plan_from_checkpoint(missing, {"colour": "blue"})
    with pytest.raises(ExportError, match="max_pixels"):
        plan_from_checkpoint(missing, {"max_pixels": "many"})
    with pytest.raises(ExportError, match="format"):
        plan_from_checkpoint(missing, {"format": "tensorrt"})


def _tiny_images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_a_run_stopped_by_sigterm_resumes_exactly(tmp_path: Path) -> None:
    """SIGTERM at step 2 of 4 saves the state; --resume continues to the same weights as a run never stopped."""
    import os
    import signal

    images = _tiny_images(tmp_path / "images")
    config = replace(load_config("tiny"), quality=2, steps=4, batch=1, crop=64, log_every=1)
    straight = train(config, tmp_path / "straight", images, log=None)

    def stop_at_two(line: str) -> None:
        if '"step": 2,' in line:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only flags: the run saves and ends

    stopped = train(config, tmp_path / "stopped", images, log=stop_at_two)
    assert stopped.summary["steps"] == 2 and not stopped.summary["finished"]
    assert (tmp_path / "stopped" / "train_state.pt").exists()
    resumed_lines: list[str] = []
    resumed = train(replace(config, resume=True), tmp_path / "stopped", images, log=resumed_lines.append)
    assert '"resumed"' in resumed_lines[0] and resumed.summary["steps"] == 4 and resumed.summary["finished"]
    a = load_checkpoint(straight.best_checkpoint).model.state_dict()
    b = load_checkpoint(resumed.best_checkpoint).model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="state of another run"):
        train(replace(config, resume=True, lr=5e-4), tmp_path / "stopped", images, log=None)


def test_validation_uses_the_real_bitstream_and_keeps_the_best_step(tmp_path: Path) -> None:
    images = _tiny_images(tmp_path / "images")
    rng = np.random.default_rng(2)
    held_out = {"a": (rng.random((64, 64, 3)) * 255).astype(np.uint8)}
    config = replace(load_config("tiny"), quality=2, steps=3, batch=1, crop=64, log_every=1, eval_every=2)
    result = train(config, tmp_path / "run", images, log=None, validation=held_out)
    validations = load_checkpoint(result.best_checkpoint).extras["provenance"]["validation"]
    assert [v["step"] for v in validations] in ([2], [2, 3])  # checkpoint.pt is written at its best step
    best = result.summary["best_validation"]
    assert best["step"] in (2, 3) and best["bpp"] > 0 and np.isfinite(best["psnr"])
    assert load_checkpoint(result.best_checkpoint).extras["provenance"]["training"]["steps"] == best["step"]
    # the stream the validation measured is a real one: encoding the held-out image gives those bytes
    from families.imagecodec.codec import encode
    from training.imagecodec.networks import TorchNetworks, codec_model

    model = load_checkpoint(result.best_checkpoint).model
    data, _ = encode(held_out["a"], TorchNetworks(model), codec_model(model, "validation"))
    assert abs(8 * len(data) / (64 * 64) - best["bpp"]) < 1e-4
