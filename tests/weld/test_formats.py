"""Decoding of the real weld file formats (.avi, .jpg, .flac, sensor .csv) written by the generator."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from families.weld.preprocessing import (
    CSV_HEADER,
    SENSOR_COLUMNS,
    ModalityError,
    PreprocessParams,
    decode_audio,
    decode_photos,
    decode_sensors,
    decode_video,
    frame_indices,
    read_sensor_csv,
    resample_sensors,
)
from training.weld.synthetic import write_avi, write_flac, write_jpg, write_sensor_csv

PARAMS = PreprocessParams(video_frames=4, video_size=16, num_photos=5, photo_size=16, audio_mel_bins=32,
                          audio_frames=64, sensor_steps=32)


def _denormalise(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) normalised -> mean RGB in 0..255."""
    mean = np.asarray(PARAMS.image_mean)[:, None, None]
    std = np.asarray(PARAMS.image_std)[:, None, None]
    return ((chw * std + mean) * 255).mean(axis=(1, 2))


def test_video_frames_are_sampled_uniformly_and_resized(tmp_path: Path) -> None:
    levels = np.arange(12) * 20  # frame i is a flat grey of level 20 i
    frames = np.stack([np.full((48, 64, 3), level, np.uint8) for level in levels])
    path = tmp_path / "clip.avi"
    write_avi(path, frames)
    video = decode_video(path, PARAMS)
    assert video.shape == (4, 3, 16, 16) and video.dtype == np.float32
    wanted = frame_indices(12, 4)
    assert wanted.tolist() == [0, 4, 7, 11]
    got = np.array([_denormalise(f).mean() for f in video])
    np.testing.assert_allclose(got, levels[wanted], atol=4)  # MJPEG is lossy, by a few levels
    # Bytes and path decode identically (the service receives bytes, training reads paths).
    np.testing.assert_array_equal(decode_video(path.read_bytes(), PARAMS), video)


def test_video_shorter_than_the_frame_count_repeats_frames(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 16, 3), level, np.uint8) for level in (10, 200)])
    write_avi(tmp_path / "short.avi", frames)
    video = decode_video(tmp_path / "short.avi", PARAMS)
    got = np.array([_denormalise(f).mean() for f in video])
    np.testing.assert_allclose(got, [10, 10, 200, 200], atol=4)


def test_photos_keep_colour_and_order(tmp_path: Path) -> None:
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (128, 128, 128), (200, 200, 0)]
    paths = []
    for i, colour in enumerate(colours):
        rgb = np.zeros((45, 100, 3), np.uint8) + np.asarray(colour, np.uint8)  # 2000x900 aspect
        paths.append(tmp_path / f"p_{i}.jpg")
        write_jpg(paths[-1], rgb)
    photos = decode_photos(paths, PARAMS)
    assert photos.shape == (5, 3, 16, 16)
    for photo, colour in zip(photos, colours, strict=True):
        np.testing.assert_allclose(_denormalise(photo), colour, atol=6)
    with pytest.raises(ModalityError) as info:
        decode_photos(paths[:3], PARAMS)
    assert info.value.modality == "photos" and "expected 5" in str(info.value)
    filled = decode_photos(paths[:3], PARAMS, allow_fewer=True)
    assert np.all(filled[3:] == 0) and np.array_equal(filled[:3], photos[:3])


def _tone(freq: float, rate: int, seconds: float = 0.8) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_flac_to_fbank_in_ast_layout(tmp_path: Path) -> None:
    write_flac(tmp_path / "low.flac", _tone(500, 16_000), 16_000)
    write_flac(tmp_path / "high.flac", _tone(3000, 16_000), 16_000)
    write_flac(tmp_path / "low22.flac", _tone(500, 22_050), 22_050)
    low = decode_audio(tmp_path / "low.flac", PARAMS)
    high = decode_audio(tmp_path / "high.flac", PARAMS)
    assert low.shape == (64, 32) and low.dtype == np.float32  # (time, mel) as ASTModel expects
    # The tone's energy sits in a higher mel band for the higher tone.
    assert high[10:40].mean(0).argmax() > low[10:40].mean(0).argmax() + 5
    # 22.05 kHz input is resampled to 16 kHz: same spectrum as the native 16 kHz file.
    resampled = decode_audio(tmp_path / "low22.flac", PARAMS)
    assert resampled[10:40].mean(0).argmax() == low[10:40].mean(0).argmax()
    # (quiet bands differ a little: log of near-silence after 16-bit quantisation and polyphase filtering)
    assert np.corrcoef(resampled[5:60].ravel(), low[5:60].ravel())[0, 1] > 0.9
    # 0.8 s = 78 frames > 64: truncated to max_length; a 0.3 s clip is zero-padded at the end.
    write_flac(tmp_path / "short.flac", _tone(500, 16_000, 0.3), 16_000)
    short = decode_audio(tmp_path / "short.flac", PARAMS)
    assert short.shape == (64, 32)
    pad_value = (0.0 - PARAMS.audio_mean) / (2 * PARAMS.audio_std)  # AST normalises the zero padding too
    np.testing.assert_allclose(short[40:], pad_value, atol=1e-6)


def test_sensor_csv_channels_and_resampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(100, 10, (40, 6))
    rows = [["08/17/2022", f"09:00:{i:02d}.000", "P1", *[f"{v:.3f}" for v in row], ""] for i, row in
            enumerate(values)]
    rows[5][4] = ""  # a blank CO2 Weld Flow reading, as loggers produce
    path = tmp_path / "P1.csv"
    write_sensor_csv(path, rows)
    with path.open() as handle:
        assert next(csv.reader(handle)) == list(CSV_HEADER)
    raw = read_sensor_csv(path)
    expected = np.round(values, 3)
    expected[5, 1] = expected[4, 1]  # carried forward
    np.testing.assert_allclose(raw, expected, atol=1e-9)
    resampled = resample_sensors(raw, 32)
    np.testing.assert_allclose(resampled[0], raw[0])
    np.testing.assert_allclose(resampled[-1], raw[-1])
    params = PreprocessParams(sensor_steps=32, sensor_mean=list(raw.mean(0)), sensor_std=list(raw.std(0)))
    sensors = decode_sensors(path, params)
    assert sensors.shape == (32, len(SENSOR_COLUMNS)) and sensors.dtype == np.float32
    assert abs(float(sensors.mean())) < 0.5


def test_csv_column_names_match_loosely_and_missing_ones_are_named(tmp_path: Path) -> None:
    header = "date,time,part no,PRESSURE,co2 weld flow,feed,primary weld current,wire consumed," \
             "secondary weld voltage,remarks\n"
    (tmp_path / "a.csv").write_text(header + "d,t,p,1,2,3,4,5,6,\nd,t,p,2,3,4,5,6,7,\n")
    np.testing.assert_allclose(read_sensor_csv(tmp_path / "a.csv"), [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]])
    (tmp_path / "b.csv").write_text("Date,Time,Pressure,Feed\nd,t,1,2\nd,t,1,2\n")
    with pytest.raises(ModalityError) as info:
        read_sensor_csv(tmp_path / "b.csv")
    assert info.value.modality == "sensors" and "CO2 Weld Flow" in str(info.value)


@pytest.mark.parametrize("modality", ["video", "photos", "audio", "sensors"])
def test_unreadable_files_name_their_modality(modality: str) -> None:
    garbage = b"\x00\x01 this is not a media file \xff" * 10
    decoders = {
        "video": lambda: decode_video(garbage, PARAMS),
        "photos": lambda: decode_photos([garbage] * 5, PARAMS),
        "audio": lambda: decode_audio(garbage, PARAMS),
        "sensors": lambda: decode_sensors(b"\xff\xfe\x00garbage", PARAMS),
    }
    with pytest.raises(ModalityError) as info:
        decoders[modality]()
    assert info.value.modality == modality


def test_vectorised_fbank_equals_transformers_ast_feature_extractor() -> None:
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    if is_speech_available():
        pytest.skip("torchaudio is installed: ASTFeatureExtractor then uses torchaudio's Kaldi code instead")
    from families.weld.preprocessing import kaldi_fbank

    rng = np.random.default_rng(0)
    for seconds in (0.3, 0.8, 2.0):  # padded, truncated, much longer than max_length
        wave = (0.3 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32)
        reference = ASTFeatureExtractor(num_mel_bins=PARAMS.audio_mel_bins, max_length=PARAMS.audio_frames)(
            wave, sampling_rate=16_000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(kaldi_fbank(wave, PARAMS), reference, rtol=1e-5, atol=1e-5)
