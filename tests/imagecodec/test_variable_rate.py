"""Variable-rate codec (issue 30): trained levels with learned per-channel quantisation steps, coded through the
real bitstream, exported as one model per level; and the report's metrics (BD-rate, MS-SSIM)."""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from export.families.imagecodec import publish_levels
from families.imagecodec.bitstream import BitstreamError
from families.imagecodec.codec import decode, encode
from families.imagecodec.contract import Preprocessing, level_hash
from families.imagecodec.tables import PmfTables
from families.manifest import Manifest
from training.imagecodec.benchmark import bd_rate, operating_points
from training.imagecodec.config import load_config, tiny_config
from training.imagecodec.metrics import ms_ssim, psnr
from training.imagecodec.model import ImageCodec
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import (
    STATE,
    checkpoint_from_state,
    initial_log_steps,
    level_of_step,
    load_checkpoint,
    make_optimiser,
    train,
    training_step,
)

LAMBDAS = (0.002, 0.01, 0.05)


def _vr_model(seed: int = 0) -> ImageCodec:
    torch.manual_seed(seed)
    model = ImageCodec(tiny_config(levels=len(LAMBDAS)))
    with torch.no_grad():  # a non-trivial entropy model and distinct per-channel steps per level
        model.h_s.net[-1].bias[: model.cfg.M].uniform_(-1.0, 2.0)
        model.log_steps.copy_(torch.empty_like(model.log_steps).uniform_(-1.0, 0.7))
    return model.eval()


def _image(h: int = 64, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([np.sin(xx / 7 + c) * 70 + 128 + yy * 0.4 for c in range(3)], -1)
    return np.clip(smooth + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def _tiny_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(_image(96, 160, seed=i)).save(folder / f"{i}.png")
    return folder


def test_levels_are_balanced_and_a_function_of_the_step() -> None:
    drawn = [level_of_step(s, 6, seed=3) for s in range(1, 6 * 50 + 1)]
    assert Counter(drawn) == {k: 50 for k in range(6)}
    assert drawn == [level_of_step(s, 6, seed=3) for s in range(1, 6 * 50 + 1)]  # resumable without RNG state
    assert drawn != [level_of_step(s, 6, seed=4) for s in range(1, 6 * 50 + 1)]


def test_a_variable_rate_step_trains_the_level_steps() -> None:
    config = replace(load_config("tiny"), model=tiny_config(levels=3), lambdas=LAMBDAS, batch=1, crop=64)
    model = ImageCodec(config.model)
    optimiser, _ = make_optimiser(model, config)
    assert [g["lr"] for g in optimiser.param_groups] == [config.lr, config.step_lr]
    before = model.log_steps.detach().clone()
    x = torch.from_numpy(_image()).permute(2, 0, 1)[None].float() / 255
    losses = training_step(model, optimiser, x, LAMBDAS[1], level=1)
    assert all(math.isfinite(v) for v in losses.values())
    changed = (model.log_steps.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False]  # only the trained level's steps moved


def test_initial_steps_reproduce_the_one_lambda_model() -> None:
    steps = initial_log_steps((0.0035, 0.014), reference=0.0035, channels=4).exp()
    assert torch.allclose(steps, torch.tensor([[1.0] * 4, [0.5] * 4]))


def test_variable_rate_run_resumes_and_validates_every_level(tmp_path: Path) -> None:
    images = _tiny_folder(tmp_path / "images")
    config = replace(load_config("tiny"), model=tiny_config(levels=3), lambdas=LAMBDAS, steps=3, batch=1, crop=64,
                     log_every=1, eval_every=3)
    validation = {"a": _image(64, 128)}
    result = train(config, tmp_path / "run", images, log=None, validation=validation)
    best = result.summary["best_validation"]
    assert [lv["level"] for lv in best["levels"]] == [1, 2, 3] and best["cost"] > 0
    assert (tmp_path / "run" / STATE).exists()
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.extras["lambdas"] == list(LAMBDAS) and loaded.extras["quality"] is None
    snapshot = load_checkpoint(checkpoint_from_state(tmp_path / "run" / STATE, tmp_path / "snapshot.pt"))
    assert snapshot.extras["lambdas"] == list(LAMBDAS) and snapshot.extras["provenance"]["training"]["steps"] == 3
    state = torch.load(tmp_path / "run" / STATE, weights_only=False)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in snapshot.model.state_dict().items())
    with pytest.raises(ValueError, match="another run"):  # the state records the lambdas
        train(replace(config, lambdas=(0.001, 0.01, 0.05), resume=True), tmp_path / "run", images, log=None,
              validation=validation)


def test_per_channel_steps_round_trip_exactly_through_the_bitstream() -> None:
    model = _vr_model()
    nets, image = TorchNetworks(model), _image()
    sizes = []
    for level in range(len(LAMBDAS)):
        steps = tuple(model.level_steps(level).double().tolist())
        cm = codec_model(model, f"imagecodec-q{level + 1}", step=steps)
        data, enc = encode(image, nets, cm)
        rec, dec = decode(data, nets, cm)
        np.testing.assert_array_equal(dec.symbols, enc.symbols)
        again, _ = decode(data, nets, cm)
        np.testing.assert_array_equal(again, rec)
        sizes.append(len(data))
        other = tuple(model.level_steps((level + 1) % len(LAMBDAS)).double().tolist())
        with pytest.raises(BitstreamError):  # another level's steps: another identity, refused
            decode(data, nets, codec_model(model, "other", step=other))
    assert len(set(sizes)) == len(sizes)


def test_a_step_vector_of_equal_values_codes_as_the_scalar_step() -> None:
    """The per-channel path runs the scalar path's arithmetic element by element: same symbols, same bytes
    of every substream (only the identity in the header differs)."""
    model = _vr_model()
    nets, image = TorchNetworks(model), _image()
    for step in (1.0, 0.7):
        scalar = codec_model(model, "q", step=step)
        vector = codec_model(model, "q", step=(step,) * model.cfg.M)
        data_s, enc_s = encode(image, nets, scalar)
        data_v, enc_v = encode(image, nets, vector)
        np.testing.assert_array_equal(enc_s.symbols, enc_v.symbols)
        assert len(data_s) == len(data_v) and data_s[-200:-4] == data_v[-200:-4]


def test_manifests_with_scalar_or_no_step_still_parse_and_vectors_are_checked() -> None:
    base = {"M": 4, "N": 3, "model_hash": "00" * 8}
    assert Preprocessing.model_validate(base).step == 1.0
    assert Preprocessing.model_validate({**base, "step": 0.7}).step == 0.7
    vector = Preprocessing.model_validate({**base, "step": [0.5, 1.0, 2.0, 0.25], "lambda": 0.01})
    assert vector.step == [0.5, 1.0, 2.0, 0.25] and vector.lmbda == 0.01
    assert vector.model_dump(mode="json", by_alias=True)["step"] == [0.5, 1.0, 2.0, 0.25]
    for bad in ([0.5, 1.0], [0.5, 1.0, -2.0, 1.0], [0.5, 1.0, float("nan"), 1.0], 0.0):
        with pytest.raises(ValueError):
            Preprocessing.model_validate({**base, "step": bad})
    weights = bytes(range(8))
    assert level_hash(weights, 1.0) == weights
    assert level_hash(weights, [1.0, 1.0]) != weights != level_hash(weights, [1.0, 0.5])


@pytest.fixture(scope="module")
def trained_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("imagecodec-vr")
    model = _vr_model()
    ckpt = root / "vr.pt"
    heldout = {str(k + 1): {"bpp": 0.1 * (k + 1), "psnr": 30.0 + k} for k in range(len(LAMBDAS))}
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "quality": None, "lambda": None,
                "lambdas": list(LAMBDAS), "heldout": heldout}, ckpt)
    repo = root / "repo"
    written = publish_levels(ckpt, repo, {q: None for q in (1, 2, 3)}, torchscript=False)
    assert [p.parent.name for p in written] == ["imagecodec-q1", "imagecodec-q2", "imagecodec-q3"]
    assert publish_levels(ckpt, repo, {q: None for q in (1, 2, 3)}, torchscript=False) == []
    return repo, ckpt, heldout


def test_publish_trained_levels_and_decode_from_the_manifests(trained_repository: tuple[Path, Path, dict]) -> None:
    repo, ckpt, heldout = trained_repository
    model = load_checkpoint(ckpt).model
    nets, image = TorchNetworks(model), _image()
    points = {p.quality: p for p in operating_points(ckpt)}
    for q in (1, 2, 3):
        version = repo / f"imagecodec-q{q}" / "1"
        manifest = Manifest.read(version)
        pre = manifest.preprocessing_as(Preprocessing)
        assert pre.quality == q and pre.lmbda == LAMBDAS[q - 1]
        assert pre.step == list(points[q].step)
        assert manifest.provenance["heldout"] == heldout[str(q)]
        tables = PmfTables.from_bytes((version / "pmf_tables.npz").read_bytes())
        served = pre.codec_model(manifest.name, tables)
        data, enc = encode(image, nets, codec_model(model, manifest.name, step=points[q].step))
        _, dec = decode(data, nets, served)  # the manifest's steps and hash decode the eager model's stream
        np.testing.assert_array_equal(dec.symbols, enc.symbols)


def test_every_trained_level_round_trips_over_http(trained_repository: tuple[Path, Path, dict], serve) -> None:
    from tests.fixtures.imagecodec import local_codec, png_bytes

    repo, _, _ = trained_repository
    server = serve(repo)
    image = _image(96, 130, seed=3)
    sizes = []
    for q in (1, 2, 3):
        r = httpx.post(f"{server.url}/image/compress", params={"quality": q}, timeout=60,
                       files={"image": ("a.png", png_bytes(image), "image/png")})
        assert r.status_code == 200, r.text
        nets, model = local_codec(repo / f"imagecodec-q{q}" / "1")
        local_stream, _ = encode(image, nets, model)
        assert r.content == local_stream  # the service codes with the level's per-channel steps
        d = httpx.post(f"{server.url}/image/decompress", content=r.content, timeout=60)
        assert d.status_code == 200, d.text
        local, _ = decode(r.content, nets, model)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(d.content)).convert("RGB")), local)
        sizes.append(len(r.content))
    assert len(set(sizes)) == 3  # each level its own steps (random here: no order between them)
    missing = httpx.post(f"{server.url}/image/compress", params={"quality": 6}, timeout=60,
                         files={"image": ("a.png", png_bytes(image), "image/png")})
    assert missing.status_code == 404 and "installed" in missing.text


def test_bd_rate_on_a_known_case_states_its_range() -> None:
    anchor = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr": [26.0, 29.0, 32.0, 35.0], "ms_ssim": [0.9, 0.95, 0.97, 0.98]}
    fewer = {**anchor, "bpp": [r * 0.8 for r in anchor["bpp"]]}
    result = bd_rate(anchor, fewer)
    assert result["percent"] == pytest.approx(-20.0, abs=1e-6) and result["range"] == [26.0, 35.0]
    shifted = {**anchor, "psnr": [q + 1.5 for q in anchor["psnr"]]}
    partial = bd_rate(anchor, shifted)
    assert partial["range"] == [27.5, 35.0] and partial["percent"] < 0
    assert bd_rate(anchor, {**anchor, "psnr": [q + 20 for q in anchor["psnr"]]})["percent"] is None
    assert bd_rate(anchor, fewer, "ms_ssim")["percent"] == pytest.approx(-20.0, abs=1e-6)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_distortion() -> None:
    image = _image(192, 256)
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(1)
    mild = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    strong = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ms_ssim(image, mild) > ms_ssim(image, strong) > 0.0
    assert psnr(image, mild) > psnr(image, strong)


def test_shipped_variable_rate_levels_rise_in_rate_and_quality() -> None:
    """The served checkpoint's six trained levels on crops of photographs it never saw: bpp (actual stream
    bytes) strictly increasing with the level on every image, mean PSNR increasing, exact round trips."""
    from training.imagecodec.data import heldout_photos
    from training.imagecodec.default import DEFAULT_LEVELS, SHIPPED

    torch.set_num_threads(2)
    points = operating_points(SHIPPED)
    assert [p.quality for p in points] == sorted(DEFAULT_LEVELS) == [1, 2, 3, 4, 5, 6]
    crops = [np.ascontiguousarray(img[64:256 + 64, 64:192 + 64]) for img in heldout_photos().values()]
    nets = TorchNetworks(points[0].model)
    rates, quality = [], []
    for point in points:
        cm = codec_model(point.model, point.name, step=point.step)
        row_rate, row_quality = [], []
        for image in crops:
            data, enc = encode(image, nets, cm)
            rec, dec = decode(data, nets, cm)
            np.testing.assert_array_equal(dec.symbols, enc.symbols)
            row_rate.append(8 * len(data) / image[..., 0].size)
            row_quality.append(psnr(image, rec))
        rates.append(row_rate)
        quality.append(np.mean(row_quality))
    assert (np.diff(np.array(rates), axis=0) > 0).all(), rates
    assert (np.diff(quality) > 0).all(), quality
