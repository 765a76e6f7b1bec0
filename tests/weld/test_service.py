"""POST /weld/classify and /weld/gallery on a real service process serving an exported small weld model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from families.weld.classes import CLASSES
from families.weld.preprocessing import MODALITIES, PreprocessParams, SampleFiles
from service.families.weld.routes import _decode_uploads
from training.weld.data import IncompleteReport, load_sample, read_manifest

TOKEN = "weld-test-token"


def _record(data: Path, split: str, index: int = 0):
    return [r for r in read_manifest(data) if r.split == split][index]


def _files(record, photos_reversed: bool = False) -> list[tuple[str, tuple[str, bytes, str]]]:
    photos = record.photo_paths()
    if photos_reversed:
        photos = photos[::-1]  # the service orders photos by file name, like the training loader
    parts = [("video", (record.video_path().name, record.video_path().read_bytes(), "video/x-msvideo")),
             ("audio", (record.audio_path().name, record.audio_path().read_bytes(), "audio/flac")),
             ("sensors", (record.sensor_path().name, record.sensor_path().read_bytes(), "text/csv"))]
    parts += [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    return parts


def _params(repository: Path) -> PreprocessParams:
    manifest = json.loads((repository / "weld" / "1" / "manifest.json").read_text())
    return PreprocessParams.from_dict(manifest["preprocessing"]["params"])


def test_service_preprocessing_equals_training(weld_data: Path, weld_repository: Path) -> None:
    params = _params(weld_repository)
    record = _record(weld_data, "TEST")
    trained_side = load_sample(record, params, "skip", IncompleteReport(policy="skip"))
    assert trained_side is not None
    photos = [(p.name, p.read_bytes()) for p in record.photo_paths()][::-1]
    uploads = SampleFiles(video=record.video_path().read_bytes(), audio=record.audio_path().read_bytes(),
                          sensors=record.sensor_path().read_bytes(),
                          photos=[b for _, b in sorted(photos)])
    served_side = _decode_uploads([(0, uploads, {})], params)[0].tensors
    for modality in MODALITIES:
        np.testing.assert_array_equal(served_side[modality], trained_side[modality], err_msg=modality)


@pytest.fixture
def server(live_server, weld_repository: Path, tmp_path: Path):
    return live_server(weld_repository, env={"SERVICE_ADMIN_TOKEN": TOKEN,
                                             "SERVICE_STATE_DIR": str(tmp_path / "state")})


def test_classify_uploads_tensors_enrol_and_restart(server, live_server, weld_data: Path, weld_repository: Path,
                                                    tmp_path: Path) -> None:
    client = httpx.Client(base_url=server.url, timeout=60)
    train_record = _record(weld_data, "TRAIN", 5)
    test_record = _record(weld_data, "TEST", 3)

    # A TRAIN sample is in the shipped gallery: the service finds itself at distance ~0, which only
    # happens when its decoding + preprocessing + ONNX graph reproduce training's embedding.
    reply = client.post("/weld/classify", files=_files(train_record, photos_reversed=True), data={"id": "t"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "weld" and body["version"] == 1 and body["k"] == 5 and body["metric"] == "cosine"
    result = body["results"][0]
    assert result["id"] == "t" and result["class"] in CLASSES
    nearest = result["neighbours"][0]
    assert nearest["id"] == train_record.sample_id and nearest["distance"] < 1e-5
    distances = [n["distance"] for n in result["neighbours"]]
    assert distances == sorted(distances) and len(distances) == 5
    assert sum(result["votes"].values()) == pytest.approx(1.0)
    assert max(result["votes"], key=result["votes"].get) == result["class"]

    # Two samples in one request (multipart), and the same samples as ready tensors (JSON).
    params = _params(weld_repository)
    files = [(f"{name}.{i}", part) for i, rec in enumerate([test_record, train_record])
             for name, part in _files(rec)]
    multi = client.post("/weld/classify", files=files)
    assert multi.status_code == 200, multi.text
    assert len(multi.json()["results"]) == 2
    tensors = []
    for i, rec in enumerate([test_record, train_record]):
        sample = load_sample(rec, params, "skip")
        assert sample is not None
        tensors.append({"id": f"s{i}", **{m: sample[m].tolist() for m in MODALITIES}})
    as_json = client.post("/weld/classify", json={"samples": tensors})
    assert as_json.status_code == 200, as_json.text
    for from_files, from_tensors in zip(multi.json()["results"], as_json.json()["results"], strict=True):
        assert [n["id"] for n in from_files["neighbours"]] == [n["id"] for n in from_tensors["neighbours"]]
        np.testing.assert_allclose([n["distance"] for n in from_files["neighbours"]],
                                   [n["distance"] for n in from_tensors["neighbours"]], atol=1e-5)

    # Enrolment: authenticated, persisted, visible to the next request.
    enrol_files = _files(test_record) + [("id", (None, "enrolled-1")), ("label", (None, "burn through"))]
    assert client.post("/weld/gallery", files=enrol_files).status_code == 401
    assert client.post("/weld/gallery", files=enrol_files,
                       headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    size_before = client.get("/weld/gallery").json()["size"]
    enrolled = client.post("/weld/gallery", files=enrol_files, headers=auth)
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["gallery_size"] == size_before + 1
    again = client.post("/weld/gallery", files=enrol_files, headers=auth)
    assert again.status_code == 409
    bad_label = _files(test_record) + [("id", (None, "x2")), ("label", (None, "rust"))]
    reply = client.post("/weld/gallery", files=bad_label, headers=auth)
    assert reply.status_code == 422 and "label" in reply.json()["error"]["message"]
    after = client.post("/weld/classify", files=_files(test_record)).json()["results"][0]
    assert after["neighbours"][0]["id"] == "enrolled-1" and after["neighbours"][0]["label"] == "Burnthrough"
    assert after["neighbours"][0]["distance"] < 1e-5
    client.close()

    # A restart keeps the enrolled reference.
    server.terminate()
    restarted = live_server(weld_repository, env={"SERVICE_ADMIN_TOKEN": TOKEN,
                                                  "SERVICE_STATE_DIR": str(tmp_path / "state")})
    info = httpx.get(f"{restarted.url}/weld/gallery", timeout=30).json()
    assert info["size"] == size_before + 1 and info["enrolled"] == 1 and info["per_class"]["Burnthrough"] >= 1


def test_bad_inputs_are_422_naming_the_modality(server, weld_data: Path, weld_repository: Path) -> None:
    client = httpx.Client(base_url=server.url, timeout=60)
    record = _record(weld_data, "TEST")
    full = _files(record)

    def post_files(parts):
        return client.post("/weld/classify", files=parts)

    def expect(reply: httpx.Response, modality: str) -> None:
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error["details"]["modality"] == modality and modality in error["message"]

    for modality in MODALITIES:  # missing modality
        expect(post_files([p for p in full if p[0] != modality]), modality)
    csv_bytes = record.sensor_path().read_bytes()
    expect(post_files([p for p in full if p[0] != "video"] + [("video", ("v.avi", csv_bytes, "video/x-msvideo"))]),
           "video")
    expect(post_files([p for p in full if p[0] != "audio"] + [("audio", ("a.flac", b"fLaC junk", "audio/flac"))]),
           "audio")
    expect(post_files([p for p in full if p[0] != "sensors"] + [("sensors", ("s.csv", b"a,b\n1,2\n", "text/csv"))]),
           "sensors")
    photos = [p for p in full if p[0] == "photos"]
    expect(post_files([p for p in full if p[0] != "photos"] + photos[:3]), "photos")
    broken_photo = ("photos", ("x.jpg", b"no", "image/jpeg"))
    expect(post_files([p for p in full if p[0] != "photos"] + photos[:4] + [broken_photo]), "photos")

    params = _params(weld_repository)
    shapes = params.shapes()
    good = {m: np.zeros(shapes[m], np.float32).tolist() for m in MODALITIES}
    for modality in MODALITIES:
        wrong = dict(good)
        wrong[modality] = np.zeros((2, 3), np.float32).tolist()
        expect(client.post("/weld/classify", json={"samples": [wrong]}), modality)
        missing = {m: v for m, v in good.items() if m != modality}
        expect(client.post("/weld/classify", json={"samples": [missing]}), modality)
    nan = dict(good)
    nan["audio"] = np.full(shapes["audio"], np.nan).tolist()
    expect(client.post("/weld/classify", content=json.dumps({"samples": [nan]}),
                       headers={"content-type": "application/json"}), "audio")
    assert client.post("/weld/classify", json={"samples": [good]}).status_code == 200
    assert client.post("/weld/classify", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/weld/classify", content=b"{nope", headers={"content-type": "application/json"}
                       ).status_code == 400
    assert client.post("/weld/classify?metric=hamming", json={"samples": [good]}).status_code == 422
    client.close()
