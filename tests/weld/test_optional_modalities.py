"""Issue 15 item 7: the presence mask reaches the model (an absent modality's tokens are dropped), it is an
input of the exported graph of a version that declares modalities optional, such a version answers samples
without them, and one that declares none still refuses them by name (as do manifests from before the mask)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from families.weld.contract import MASK_INPUT, Preprocessing
from families.weld.preprocessing import MODALITIES, PreprocessParams
from training.weld.config import small
from training.weld.data import read_manifest
from training.weld.modality_dropout import check_droppable, drop_modalities
from training.weld.model import build_model

GOLDEN_WELD = Path(__file__).parents[1] / "golden" / "repository" / "weld" / "1" / "manifest.json"
AUDIO = MODALITIES.index("audio")


def _inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = small().preprocess.shapes()
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, *shapes[m], generator=generator) for m in MODALITIES}


@torch.no_grad()
def test_absent_modality_is_dropped_not_zero_filled() -> None:
    model = build_model(small(), seed=0).eval()
    x = _inputs(2)
    ones = torch.ones(2, 4)
    without_audio = ones.clone()
    without_audio[:, AUDIO] = 0
    zero_audio = {**x, "audio": torch.zeros_like(x["audio"])}
    other_audio = {**x, "audio": _inputs(2, seed=1)["audio"]}

    full = model(*x.values())
    assert torch.equal(model(*x.values(), mask=ones), full)  # all present = the unmasked model, bit for bit
    masked = model(*zero_audio.values(), mask=without_audio)
    # Dropped: what the audio tensor holds no longer matters ...
    torch.testing.assert_close(model(*other_audio.values(), mask=without_audio), masked, rtol=0, atol=1e-6)
    # ... and is not the same as a zero-filled audio the model attends to.
    assert (masked - model(*zero_audio.values(), mask=ones)).abs().max() > 1e-3
    _, maps = model(*zero_audio.values(), mask=without_audio, return_attention=True)
    assert maps["audio"].abs().max() == 0 and maps["video"].abs().max() > 0


def test_modality_dropout_drops_only_optional_and_never_all() -> None:
    x = _inputs(256)
    mask = torch.ones(256, 4, dtype=torch.bool)
    mask[:8, MODALITIES.index("sensors")] = False  # already absent (zero-filled by the loader)
    out, new = drop_modalities(x, mask, 0.5, ["audio", "video"], torch.Generator().manual_seed(0))
    for i, m in enumerate(MODALITIES):
        dropped = mask[:, i] & ~new[:, i]
        if m in ("photos", "sensors"):
            assert not dropped.any(), m
        else:
            assert 60 < int(dropped.sum()) < 196, m  # ~half of 256
            assert torch.equal(out[m][dropped], torch.zeros_like(out[m][dropped]))
            assert torch.equal(out[m][~dropped], x[m][~dropped])
    assert not (new & ~mask).any()  # nothing absent becomes present
    # Everything droppable at p ~ 1: each sample keeps one modality.
    _, nearly_all = drop_modalities(x, mask, 0.99, list(MODALITIES), torch.Generator().manual_seed(0))
    assert nearly_all.any(dim=1).all() and (nearly_all.sum(dim=1) == 1).float().mean() > 0.9
    same, unchanged = drop_modalities(x, mask, 0.0, ["audio"], torch.Generator())
    assert same is x and unchanged is mask
    with pytest.raises(ValueError, match="optional_modalities"):
        check_droppable(0.3, [])
    with pytest.raises(ValueError, match="unknown modalities"):
        check_droppable(0.3, ["smell"])


def test_training_with_modality_dropout(weld_data: Path, tmp_path: Path) -> None:
    from training.threads import torch_threads
    from training.weld.train import train

    config = small()
    config.train.epochs = 1
    config.train.optional_modalities = ["audio"]
    config.train.modality_dropout = 0.5
    with torch_threads(1):
        result = train(config, tmp_path, weld_data, log=lambda _: None)
    assert result.summary["modality_dropout"] == {"p": 0.5, "modalities": ["audio"]}
    saved = torch.load(tmp_path / "best.pt", weights_only=False)["config"]["train"]
    assert saved["optional_modalities"] == ["audio"] and saved["modality_dropout"] == 0.5


@pytest.fixture(scope="module")
def optional_repository(tmp_path_factory: pytest.TempPathFactory, weld_run: Path, weld_repository: Path) -> Path:
    """`weld` (the fixture version: nothing optional) and `weld_optional` (the same checkpoint exported with
    audio and photos optional) in one repository."""
    from export.core import publish, with_batching
    from export.families.weld import plan_from_checkpoint

    repository = tmp_path_factory.mktemp("weld-optional-repo")
    shutil.copytree(weld_repository / "weld", repository / "weld")
    plan = plan_from_checkpoint(weld_run / "best.pt", {"optional_modalities": "audio,photos"})
    publish(with_batching(plan, {"max_queue_delay_ms": "2"}), repository, "weld_optional")
    return repository


def _manifest(repository: Path, name: str) -> dict:
    return json.loads((repository / name / "1" / "manifest.json").read_text())


def test_export_declares_optional_modalities_and_the_mask_input(optional_repository: Path, weld_run: Path) -> None:
    from training.weld.train import load_checkpoint

    manifest = _manifest(optional_repository, "weld_optional")
    pre = manifest["preprocessing"]
    assert pre["optional_modalities"] == ["photos", "audio"] and pre["mask_input"] == MASK_INPUT
    graph = manifest["graphs"]["model"]
    assert [i["name"] for i in graph["inputs"]] == [*MODALITIES, MASK_INPUT]
    assert graph["inputs"][-1]["shape"] == [-1, 4] and graph["parity"]["passed"]

    # ONNX Runtime round trip: the graph's mask drops the audio exactly as the PyTorch model does.
    session = ort.InferenceSession(str(optional_repository / "weld_optional" / "1" / graph["file"]),
                                   providers=["CPUExecutionProvider"])
    model = load_checkpoint(weld_run / "best.pt").model
    x = _inputs(3, seed=5)
    mask = torch.ones(3, 4)
    mask[1, AUDIO] = 0
    mask[2, MODALITIES.index("photos")] = 0
    feed = {m: v.numpy() for m, v in x.items()} | {MASK_INPUT: mask.numpy()}
    (onnx_out,) = session.run(None, feed)
    with torch.no_grad():
        torch_out = model(*x.values(), mask=mask).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-3)
    other_audio = dict(feed, audio=_inputs(3, seed=6)["audio"].numpy())
    (onnx_other,) = session.run(None, other_audio)
    np.testing.assert_allclose(onnx_other[1], onnx_out[1], atol=1e-5)  # row 1: audio absent, content ignored
    assert np.abs(onnx_other[0] - onnx_out[0]).max() > 1e-4  # row 0: audio present, it matters


def test_torchscript_export_with_the_mask_input(weld_run: Path, tmp_path: Path) -> None:
    from export.core import publish
    from export.families.weld import plan_from_checkpoint

    plan = plan_from_checkpoint(weld_run / "best.pt", {"optional_modalities": "audio", "format": "torchscript"})
    version = publish(plan, tmp_path, "weld_ts")
    manifest = json.loads((version / "manifest.json").read_text())
    assert [i["name"] for i in manifest["graphs"]["model"]["inputs"]] == [*MODALITIES, MASK_INPUT]
    scripted = torch.jit.load(str(version / manifest["graphs"]["model"]["file"]))
    x = _inputs(2, seed=3)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 1]])
    a = scripted(*x.values(), mask)
    b = scripted(*{**x, "audio": torch.zeros_like(x["audio"])}.values(), mask)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    assert (a[0] - b[0]).abs().max() > 1e-4


def test_older_manifests_have_no_mask_and_nothing_optional(weld_repository: Path) -> None:
    for manifest in (json.loads(GOLDEN_WELD.read_text()), _manifest(weld_repository, "weld")):
        pre = Preprocessing.model_validate(manifest["preprocessing"])
        assert pre.mask_input is None and pre.optional_modalities == []
        assert "mask_input" not in pre.model_dump(mode="json")  # the layout of manifests before it existed
        assert [i["name"] for i in manifest["graphs"]["model"]["inputs"]] == list(MODALITIES)
    section = json.loads(GOLDEN_WELD.read_text())["preprocessing"]
    with pytest.raises(ValueError, match="mask_input"):
        Preprocessing.model_validate({**section, "optional_modalities": ["audio"]})


# ---- the service --------------------------------------------------------------------------------------

def _tensor_sample(weld_data: Path, params: PreprocessParams, drop: tuple[str, ...] = (),
                   zero: tuple[str, ...] = ()) -> dict:
    from training.weld.data import IncompleteReport, load_sample

    record = [r for r in read_manifest(weld_data) if r.split == "TEST"][0]
    tensors = load_sample(record, params, "skip", IncompleteReport(policy="skip"))
    sample = {"id": "s"}
    for m in MODALITIES:
        if m in drop:
            continue
        sample[m] = (np.zeros_like(tensors[m]) if m in zero else tensors[m]).tolist()
    return {"samples": [sample]}


def _distances(reply) -> list[tuple[str, float]]:
    assert reply.status_code == 200, reply.text
    return [(n["id"], n["distance"]) for n in reply.json()["results"][0]["neighbours"]]


@pytest.fixture(scope="module")
def service(asgi_service, optional_repository: Path):
    return asgi_service(optional_repository)


def test_version_with_optional_modalities_answers_without_them(service, optional_repository: Path,
                                                                weld_data: Path) -> None:
    params = PreprocessParams.from_dict(_manifest(optional_repository, "weld_optional")["preprocessing"]["params"])
    url = "/weld/classify?model=weld_optional"
    full = _distances(service.post(url, json=_tensor_sample(weld_data, params)))
    without_audio = _distances(service.post(url, json=_tensor_sample(weld_data, params, drop=("audio",))))
    zero_audio = _distances(service.post(url, json=_tensor_sample(weld_data, params, zero=("audio",))))
    # Left out = dropped by the model: not the answer of a zero-filled audio it attends to, nor the full one.
    assert [d for _, d in without_audio] != pytest.approx([d for _, d in zero_audio], abs=1e-6)
    assert [d for _, d in without_audio] != pytest.approx([d for _, d in full], abs=1e-6)
    both = _distances(service.post(url, json=_tensor_sample(weld_data, params, drop=("audio", "photos"))))
    assert [d for _, d in both] != pytest.approx([d for _, d in without_audio], abs=1e-6)

    # Uploads without the audio file: the same answer as the JSON sample without audio.
    record = [r for r in read_manifest(weld_data) if r.split == "TEST"][0]
    files = [("video", ("v.avi", record.video_path().read_bytes(), "video/x-msvideo")),
             ("sensors", ("s.csv", record.sensor_path().read_bytes(), "text/csv"))]
    files += [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in record.photo_paths()]
    uploaded = _distances(service.post(url, files=files))
    assert [i for i, _ in uploaded] == [i for i, _ in without_audio]
    assert [d for _, d in uploaded] == pytest.approx([d for _, d in without_audio], abs=1e-5)

    # A modality it does not declare optional is still required, by name.
    reply = service.post(url, json=_tensor_sample(weld_data, params, drop=("video",)))
    assert reply.status_code == 422 and reply.json()["error"]["details"]["modality"] == "video"


def test_version_without_optional_modalities_refuses_by_name(service, optional_repository: Path,
                                                            weld_data: Path) -> None:
    params = PreprocessParams.from_dict(_manifest(optional_repository, "weld")["preprocessing"]["params"])
    reply = service.post("/weld/classify?model=weld", json=_tensor_sample(weld_data, params, drop=("audio",)))
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["details"]["modality"] == "audio" and "audio" in error["message"]
    assert _distances(service.post("/weld/classify?model=weld", json=_tensor_sample(weld_data, params)))
