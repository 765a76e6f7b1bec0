"""Reading the weld dataset in its real layout, with an explicit policy for incomplete samples.

`manifest.csv` (CATEGORY, SUBDIRS, SPLIT) lists the samples; SUBDIRS is the sample folder relative to the
root, whose last component is the part number naming the files inside it. Categories are matched to the 12
classes case-/space-insensitively; unknown categories are reported and skipped.

Incomplete samples (a missing/unreadable modality, fewer than 5 photos) are common in public copies:
- policy "skip": the sample is left out;
- policy "zero_fill": the missing parts become zeros and the sample's `mask` (video, photos, audio,
  sensors; photos count as present when at least one decoded) says what was filled.
Either way `IncompleteReport` lists every affected sample and why.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from families.weld.classes import CLASSES, match_class
from families.weld.preprocessing import (
    MODALITIES,
    ModalityError,
    PreprocessParams,
    decode_audio,
    decode_photos,
    decode_sensors,
    decode_video,
    read_sensor_csv,
    resample_sensors,
)

SPLITS = ("TRAIN", "VAL", "TEST")
POLICIES = ("skip", "zero_fill")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class SampleRecord:
    sample_id: str  # SUBDIRS, unique within the dataset
    folder: Path
    label: int
    split: str

    @property
    def part_no(self) -> str:
        return self.folder.name

    def video_path(self) -> Path:
        return self.folder / f"{self.part_no}.avi"

    def audio_path(self) -> Path:
        return self.folder / f"{self.part_no}.flac"

    def sensor_path(self) -> Path:
        return self.folder / f"{self.part_no}.csv"

    def photo_paths(self) -> list[Path]:
        images = self.folder / "images"
        if not images.is_dir():
            return []
        return sorted(p for p in images.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


@dataclass
class IncompleteReport:
    policy: str
    problems: dict[str, list[str]] = field(default_factory=dict)  # sample id -> ["video: missing", ...]
    skipped: list[str] = field(default_factory=list)
    zero_filled: list[str] = field(default_factory=list)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    total: int = 0
    used: int = 0

    def add(self, sample_id: str, problem: str) -> None:
        self.problems.setdefault(sample_id, []).append(problem)

    def to_dict(self) -> dict:
        return {"policy": self.policy, "total": self.total, "used": self.used, "skipped": self.skipped,
                "zero_filled": self.zero_filled, "problems": self.problems,
                "unknown_categories": self.unknown_categories}

    def summary(self) -> str:
        return (f"{self.used}/{self.total} samples used; {len(self.problems)} incomplete "
                f"({len(self.skipped)} skipped, {len(self.zero_filled)} zero-filled; policy {self.policy})")


def read_manifest(root: Path, report: IncompleteReport | None = None) -> list[SampleRecord]:
    """All samples of the manifest whose category is one of the 12 classes."""
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the dataset's manifest.csv)")
    records = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().upper(): c for c in reader.fieldnames or []}
        missing = [c for c in ("CATEGORY", "SUBDIRS", "SPLIT") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            category = row[columns["CATEGORY"]]
            canonical = match_class(category)
            if canonical is None:
                if report is not None:
                    report.unknown_categories[category] = report.unknown_categories.get(category, 0) + 1
                continue
            split = row[columns["SPLIT"]].strip().upper()
            if split not in SPLITS:
                raise ValueError(f"{path}: unknown SPLIT {split!r} (expected one of {SPLITS})")
            subdirs = row[columns["SUBDIRS"]].strip().strip("/")
            records.append(SampleRecord(subdirs, root / subdirs, CLASSES.index(canonical), split))
    return records


def load_sample(record: SampleRecord, params: PreprocessParams, policy: str,
                report: IncompleteReport | None = None) -> dict | None:
    """Decode + preprocess one sample; None when the policy skips it."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    shapes = params.shapes()
    tensors: dict[str, np.ndarray] = {}
    mask = {}
    problems = []
    readers = {
        "video": lambda: decode_video(_existing(record.video_path(), "video"), params),
        "photos": lambda: decode_photos(record.photo_paths(), params, allow_fewer=policy == "zero_fill"),
        "audio": lambda: decode_audio(_existing(record.audio_path(), "audio"), params),
        "sensors": lambda: decode_sensors(_existing(record.sensor_path(), "sensors"), params),
    }
    for modality in MODALITIES:
        try:
            tensors[modality] = readers[modality]()
            mask[modality] = True
        except ModalityError as exc:
            problems.append(str(exc))
            tensors[modality] = np.zeros(shapes[modality], np.float32)
            mask[modality] = False
    photos = len(record.photo_paths())
    if 0 < photos < params.num_photos and mask["photos"]:
        problems.append(f"photos: {photos} of {params.num_photos}, missing slots zero-filled")
    if problems and report is not None:
        for problem in problems:
            report.add(record.sample_id, problem)
    if problems and policy == "skip":
        if report is not None:
            report.skipped.append(record.sample_id)
        return None
    if problems and report is not None:
        report.zero_filled.append(record.sample_id)
    return {**tensors, "mask": mask, "label": record.label, "id": record.sample_id}


def _existing(path: Path, modality: str) -> Path:
    if not path.is_file():
        raise ModalityError(modality, f"missing ({path.name} not found)")
    return path


def sensor_statistics(records: list[SampleRecord], steps: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the resampled raw sensor values over `records` (the training split)."""
    chunks = []
    for record in records:
        try:
            chunks.append(resample_sensors(read_sensor_csv(_existing(record.sensor_path(), "sensors")), steps))
        except ModalityError:
            continue
    if not chunks:
        raise ValueError("no readable sensor CSV in the training split")
    stacked = np.concatenate(chunks)
    return stacked.mean(0).tolist(), np.maximum(stacked.std(0), 1e-6).tolist()


class WeldDataset(torch.utils.data.Dataset):
    """Preprocessed samples of some splits, decoded once and kept in memory (the small config's data fits)."""

    def __init__(self, records: list[SampleRecord], params: PreprocessParams, policy: str = "skip") -> None:
        self.report = IncompleteReport(policy=policy, total=len(records))
        self.samples = []
        for record in records:
            sample = load_sample(record, params, policy, self.report)
            if sample is not None:
                self.samples.append(sample)
        self.report.used = len(self.samples)
        self.labels = [s["label"] for s in self.samples]
        self.ids = [s["id"] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]



def collate(samples: list[dict]) -> dict:
    batch = {m: torch.from_numpy(np.stack([s[m] for s in samples])) for m in MODALITIES}
    batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    batch["mask"] = torch.tensor([[s["mask"][m] for m in MODALITIES] for s in samples], dtype=torch.bool)
    batch["id"] = [s["id"] for s in samples]
    return batch


def split_records(records: list[SampleRecord], val_fraction: float, seed: int) -> dict[str, list[SampleRecord]]:
    """TRAIN / VAL / TEST lists. Without a VAL split in the manifest, whole sessions of TRAIN (or, with a
    single session, a stratified fraction of its samples) become VAL. TEST is never touched; a sample id
    that appears in two splits is an error (train = test leak). Session leakage: `check_session_leakage`."""
    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    overlap = {r.sample_id for r in by_split["TRAIN"]} & {r.sample_id for r in by_split["TEST"]}
    if overlap:
        raise ValueError(f"{len(overlap)} sample(s) are both TRAIN and TEST, e.g. {sorted(overlap)[:3]}")
    if not by_split["VAL"] and val_fraction > 0:
        rng = np.random.default_rng(seed)
        carved = _carve_val_by_session(by_split["TRAIN"], val_fraction, rng)
        if carved is not None:
            by_split["TRAIN"], by_split["VAL"] = carved
            return by_split
        train, val = [], []
        for label in sorted({r.label for r in by_split["TRAIN"]}):
            group = [r for r in by_split["TRAIN"] if r.label == label]
            order = rng.permutation(len(group))
            n_val = int(round(len(group) * val_fraction)) if len(group) > 3 else 0
            val += [group[i] for i in order[:n_val]]
            train += [group[i] for i in order[n_val:]]
        by_split["TRAIN"], by_split["VAL"] = train, val
    return by_split


# ---- session leakage ------------------------------------------------------------------------------------
# Samples of one recording session (the folder above the part folder) share the rig, the operator and the
# lighting; the public dataset's split puts some sessions in TRAIN and TEST at once, which inflates test scores.


class SessionLeakageError(ValueError):
    """A split in which some recording session appears in more than one of TRAIN/VAL/TEST."""


def session_of(record: SampleRecord) -> str:
    """The session folder of a sample (SUBDIRS without its last component); "" when SUBDIRS has none."""
    return record.sample_id.rpartition("/")[0]


def session_leakage(by_split: dict[str, list[SampleRecord]]) -> dict[str, list[str]]:
    """{session: [splits it appears in]} for every session present in more than one split."""
    seen: dict[str, set[str]] = {}
    for split, records in by_split.items():
        for record in records:
            session = session_of(record)
            if session:
                seen.setdefault(session, set()).add(split)
    return {s: [x for x in SPLITS if x in splits] for s, splits in sorted(seen.items()) if len(splits) > 1}


def check_session_leakage(by_split: dict[str, list[SampleRecord]], allow: bool, log=print) -> dict[str, list[str]]:
    """Refuse a leaking split (SessionLeakageError) unless `allow`; then only warn. Returns the leaking sessions."""
    leaks = session_leakage(by_split)
    if not leaks:
        return leaks
    examples = ", ".join(f"{s} in {'+'.join(splits)}" for s, splits in list(leaks.items())[:3])
    message = f"{len(leaks)} session(s) appear in more than one of TRAIN/VAL/TEST, e.g. {examples}"
    if not allow:
        raise SessionLeakageError(f"{message}; fix the split or pass --allow-session-leakage")
    log(f"[data] WARNING: {message} (allowed by --allow-session-leakage; test scores are optimistic)")
    return leaks


def _carve_val_by_session(train: list[SampleRecord], val_fraction: float,
                          rng: np.random.Generator) -> tuple[list[SampleRecord], list[SampleRecord]] | None:
    """Whole sessions of TRAIN moved to VAL until it holds `val_fraction` of the samples, so the carve itself
    does not leak; None when TRAIN has fewer than two sessions (the caller then carves per sample)."""
    sessions = sorted({session_of(r) for r in train})
    if len(sessions) < 2 or "" in sessions:
        return None
    target = int(round(len(train) * val_fraction))
    chosen: set[str] = set()
    count = 0
    for index in rng.permutation(len(sessions))[:-1]:  # at least one session stays in TRAIN
        if count >= target:
            break
        chosen.add(sessions[index])
        count += sum(session_of(r) == sessions[index] for r in train)
    return [r for r in train if session_of(r) not in chosen], [r for r in train if session_of(r) in chosen]


def write_report(path: Path, reports: dict[str, IncompleteReport]) -> None:
    path.write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2))
