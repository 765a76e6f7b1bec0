"""Session leakage (issue 15 item 8): samples are grouped by session folder, sessions shared between
TRAIN/VAL/TEST are reported, and training refuses such a split unless --allow-session-leakage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.weld.config import load_config
from training.weld.data import (
    SampleRecord,
    SessionLeakageError,
    check_session_leakage,
    read_manifest,
    session_leakage,
    session_of,
    split_records,
)
from training.weld.synthetic import generate
from training.weld.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def leaky_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weld_leaky")
    generate(root, train=1, val=1, test=1, seed=0, sessions=2, leak_sessions=True)
    return root


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weld_clean")
    generate(root, train=1, val=1, test=1, seed=0, sessions=2)
    return root


def _splits(root: Path) -> dict[str, list[SampleRecord]]:
    return split_records(read_manifest(root), val_fraction=0.2, seed=0)


def test_leaking_synthetic_split_is_reported_and_refused(leaky_root: Path) -> None:
    splits = _splits(leaky_root)
    leaks = session_leakage(splits)
    # 2 sessions, each holding samples of all three splits.
    assert len(leaks) == 2 and all(v == ["TRAIN", "VAL", "TEST"] for v in leaks.values())
    for record in splits["TRAIN"]:
        assert session_of(record) in leaks and record.sample_id.startswith(session_of(record) + "/")
    with pytest.raises(SessionLeakageError, match=r"2 session\(s\).*--allow-session-leakage"):
        check_session_leakage(splits, allow=False)
    logged: list[str] = []
    assert check_session_leakage(splits, allow=True, log=logged.append) == leaks
    assert "WARNING" in logged[0]


def test_default_synthetic_split_has_no_leak(clean_root: Path) -> None:
    splits = _splits(clean_root)
    assert all(splits[s] for s in ("TRAIN", "VAL", "TEST"))
    assert session_leakage(splits) == {}
    assert check_session_leakage(splits, allow=False) == {}


def test_training_refuses_leaking_split(leaky_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SessionLeakageError, match="TRAIN"):
        train(load_config("small"), tmp_path / "run", leaky_root, log=lambda _: None)


def test_train_cli_refuses_without_the_flag(leaky_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.weld.train", "--data", str(leaky_root),
                           "--out", str(tmp_path / "run"), "--epochs", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SessionLeakageError" in proc.stderr and "--allow-session-leakage" in proc.stderr


def test_val_carved_from_train_keeps_sessions_whole() -> None:
    records = [SampleRecord(f"sess{i % 5}/p{i}", Path(f"/x/{i}"), i % 2, "TRAIN") for i in range(40)]
    records += [SampleRecord(f"test{i}/p{i}", Path(f"/y/{i}"), i % 2, "TEST") for i in range(4)]
    splits = split_records(records, val_fraction=0.2, seed=0)
    assert len(splits["VAL"]) == 8 and len(splits["TRAIN"]) == 32
    assert session_leakage(splits) == {}
