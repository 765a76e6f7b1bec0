"""Shared set-up of the weld benchmarks: the default weld model (trained + exported) in a work folder."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_WORKDIR = ROOT / "runs" / "weld_bench"


def prepare(workdir: Path = DEFAULT_WORKDIR) -> tuple[Path, Path, float | None]:
    """(checkpoint, repository, seconds build_default took or None when reused)."""
    from export.core import publish
    from export.families.weld import plan_from_checkpoint
    from training.weld.default import build_default

    checkpoint = workdir / "run" / "best.pt"
    seconds = None
    if not checkpoint.is_file():
        started = time.perf_counter()
        checkpoint = build_default(workdir)
        seconds = time.perf_counter() - started
    repository = workdir / "repository"
    if not (repository / "weld" / "1" / "manifest.json").is_file():
        publish(plan_from_checkpoint(checkpoint), repository, "weld", version=1)
    return checkpoint, repository, seconds


def upload_parts(data: Path, split: str = "TEST", index: int = 0) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts (the real files) of one sample of the synthetic dataset."""
    from training.weld.data import read_manifest

    record = [r for r in read_manifest(data) if r.split == split][index]
    parts = [("video", (record.video_path().name, record.video_path().read_bytes(), "video/x-msvideo")),
             ("audio", (record.audio_path().name, record.audio_path().read_bytes(), "audio/flac")),
             ("sensors", (record.sensor_path().name, record.sensor_path().read_bytes(), "text/csv"))]
    return parts + [("photos", (p.name, p.read_bytes(), "image/jpeg")) for p in record.photo_paths()]
