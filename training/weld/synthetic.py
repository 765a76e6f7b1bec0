"""Synthetic weld samples in the exact layout and file formats of Intel's robotic welding dataset.

    <root>/manifest.csv                       CATEGORY,SUBDIRS,SPLIT
    <root>/<session>/<part_no>/<part_no>.avi  arc video (MJPEG in AVI, 30 fps)
    <root>/<session>/<part_no>/<part_no>.flac audio (22.05 kHz mono, resampled to 16 kHz by preprocessing)
    <root>/<session>/<part_no>/<part_no>.csv  Date,Time,Part No,Pressure,...,Secondary Weld Voltage,Remarks
    <root>/<session>/<part_no>/images/*.jpg   5 post-weld photos (2000x900 aspect, scaled down)

Every modality carries class-dependent signal under per-sample noise, so that each one alone is a weak
classifier and the fused model has something real to learn:
video = arc blob colour/size/flicker, photos = bead colour/width/ripple, audio = tone + harmonics,
sensors = channel offsets + oscillation frequency.

CLI: python -m training.weld.synthetic OUT_DIR [--train 10 --val 3 --test 6 --seed 0 --incomplete 0.03]
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np

from families.weld.classes import CLASSES
from families.weld.preprocessing import CSV_HEADER

VIDEO_W, VIDEO_H, VIDEO_FRAMES, VIDEO_FPS = 64, 48, 12, 30
PHOTO_W, PHOTO_H = 100, 45  # 2000 x 900 scaled by 1/20
AUDIO_RATE, AUDIO_SECONDS = 22_050, 0.8
SENSOR_RATE_HZ = 8.6
NOISE = 1.0  # per-sample noise level relative to the class signal (1.0: classes overlap per modality)


@dataclass
class ClassStyle:
    hue: np.ndarray  # RGB in [0, 1]
    size: float
    freq: float
    tone: float
    offsets: np.ndarray  # (6,)


def class_styles(seed: int = 1234) -> list[ClassStyle]:
    """Fixed, well-separated per-class parameters (independent of the sample seed)."""
    rng = np.random.default_rng(seed)
    styles = []
    for c in range(len(CLASSES)):
        angle = 2 * np.pi * c / len(CLASSES)
        hue = 0.5 + 0.45 * np.array([np.cos(angle), np.cos(angle + 2.1), np.cos(angle + 4.2)])
        styles.append(ClassStyle(hue=hue, size=0.12 + 0.03 * (c % 4), freq=1.0 + 0.5 * (c % 6),
                                 tone=300.0 + 140.0 * c, offsets=rng.normal(0.0, 1.0, 6)))
    return styles


def _video_frames(style: ClassStyle, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:VIDEO_H, 0:VIDEO_W] / np.array([VIDEO_H, VIDEO_W])[:, None, None]
    frames = []
    phase = rng.uniform(0, 2 * np.pi)
    hue = np.clip(style.hue + rng.normal(0, NOISE * 0.35, 3), 0, 1)
    for t in range(VIDEO_FRAMES):
        cx = 0.2 + 0.6 * t / (VIDEO_FRAMES - 1) + rng.normal(0, 0.02)
        cy = 0.5 + rng.normal(0, 0.05)
        radius = style.size * (1 + 0.3 * np.sin(style.freq * t + phase))
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        img = 0.08 + blob[..., None] * hue[None, None, :] + rng.normal(0, NOISE * 0.2, (VIDEO_H, VIDEO_W, 3))
        frames.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def write_avi(path: Path, frames: np.ndarray, fps: int = VIDEO_FPS) -> None:
    import av

    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(fps, 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _photo(style: ClassStyle, angle: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:PHOTO_H, 0:PHOTO_W] / np.array([PHOTO_H, PHOTO_W])[:, None, None]
    width = style.size * (1 + rng.normal(0, 0.1))
    bead = np.exp(-((yy - 0.5 - rng.normal(0, 0.03)) ** 2) / (2 * width**2))
    ripple = 0.5 + 0.5 * np.sin(2 * np.pi * (4 + 2 * style.freq) * xx + rng.uniform(0, 6.3))
    hue = np.clip(style.hue + rng.normal(0, NOISE * 0.35, 3), 0, 1)
    light = 0.8 + 0.1 * angle / 4
    img = 0.35 + light * bead[..., None] * (0.6 + 0.4 * ripple[..., None]) * hue - 0.2 * bead[..., None]
    img = img + rng.normal(0, NOISE * 0.15, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_jpg(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, format="JPEG", quality=90)


def _audio(style: ClassStyle, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(AUDIO_RATE * AUDIO_SECONDS)) / AUDIO_RATE
    f0 = style.tone * (1 + rng.normal(0, NOISE * 0.1))
    wave = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(2 * np.pi * 2.7 * f0 * t)
    wave *= 1 + 0.5 * np.sin(2 * np.pi * style.freq * 3 * t + rng.uniform(0, 6.3))
    wave += rng.normal(0, NOISE * 0.3, t.shape)  # arc crackle
    return np.clip(wave, -1, 1).astype(np.float32)


def write_flac(path: Path, wave: np.ndarray, rate: int = AUDIO_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), wave, rate, format="FLAC", subtype="PCM_16")


def _sensor_rows(style: ClassStyle, part_no: str, start: datetime, rng: np.random.Generator) -> list[list]:
    rows_count = int(rng.integers(40, 80))
    base = np.array([30.0, 15.0, 300.0, 150.0, 0.0, 20.0])  # Pressure, CO2 flow, feed, current, wire, voltage
    scale = np.array([2.0, 1.5, 20.0, 12.0, 1.0, 1.5])
    t = np.arange(rows_count) / SENSOR_RATE_HZ
    rows = []
    wire = 0.0
    sample_shift = rng.normal(0, NOISE * 1.2, 6)  # per-weld drift: overlaps neighbouring classes
    for i in range(rows_count):
        wobble = np.sin(2 * np.pi * style.freq * 0.4 * t[i] + np.arange(6))
        values = base + scale * (style.offsets + 0.5 * wobble + sample_shift + rng.normal(0, 0.5, 6))
        wire += max(values[2], 0.0) / SENSOR_RATE_HZ / 60.0
        values[4] = wire  # Wire Consumed is cumulative in the real logs
        stamp = start + timedelta(seconds=float(t[i]))
        rows.append([stamp.strftime("%m/%d/%Y"), stamp.strftime("%H:%M:%S.%f")[:-3], part_no,
                     *[f"{v:.3f}" for v in values], ""])
    return rows


def write_sensor_csv(path: Path, rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def write_sample(folder: Path, part_no: str, label: int, rng: np.random.Generator,
                 styles: list[ClassStyle], drop: str | None = None) -> None:
    """One sample folder. `drop` in {video, audio, sensors, photos} leaves that modality incomplete."""
    style = styles[label]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if drop != "video":
        write_avi(folder / f"{part_no}.avi", _video_frames(style, rng))
    photos = 3 if drop == "photos" else 5
    for angle in range(photos):
        write_jpg(folder / "images" / f"{part_no}_{angle + 1}.jpg", _photo(style, angle, rng))
    if drop != "audio":
        write_flac(folder / f"{part_no}.flac", _audio(style, rng))
    if drop != "sensors":
        start = datetime(2022, 8, 17, 9, 0) + timedelta(minutes=int(rng.integers(0, 10_000)))
        write_sensor_csv(folder / f"{part_no}.csv", _sensor_rows(style, part_no, start, rng))


def generate(root: Path, train: int = 10, val: int = 3, test: int = 6, seed: int = 0,
             incomplete: float = 0.0, sessions: int = 4, leak_sessions: bool = False) -> Path:
    """Write `train`/`val`/`test` samples per class under `root`; returns the manifest path. Each split has
    its own `sessions` session folders; `leak_sessions` shares them across splits (the public dataset's defect)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    styles = class_styles()
    records = []
    counter = 0
    for label, name in enumerate(CLASSES):
        for split_index, (split, count) in enumerate((("TRAIN", train), ("VAL", val), ("TEST", test))):
            for _ in range(count):
                day = 17 if leak_sessions else 17 + split_index  # one day of sessions per split
                session = f"{8 + counter % sessions:02d}-{day}-22-{counter % sessions:04d}"
                part_no = f"{session}-{counter:05d}"
                drop = None
                if incomplete > 0 and rng.random() < incomplete:
                    drop = str(rng.choice(["video", "audio", "sensors", "photos"]))
                write_sample(root / session / part_no, part_no, label, rng, styles, drop)
                # Category spellings vary in public copies; the loader matches them loosely.
                category = name if counter % 3 else name.lower().replace("_", " ")
                records.append((category, f"{session}/{part_no}", split))
                counter += 1
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["CATEGORY", "SUBDIRS", "SPLIT"])
        writer.writerows(records)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--val", type=int, default=3)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--incomplete", type=float, default=0.0, help="fraction of samples missing a modality")
    parser.add_argument("--leak-sessions", action="store_true", help="share session folders across splits")
    args = parser.parse_args()
    manifest = generate(args.out, args.train, args.val, args.test, args.seed, args.incomplete,
                        leak_sessions=args.leak_sessions)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
