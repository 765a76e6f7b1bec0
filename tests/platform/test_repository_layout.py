"""families/repository_layout.py on real folders: which versions are on disk (the one rule), latest, next, and the
staged, atomic publish."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from families.manifest import MANIFEST_FILE
from families.repository_layout import (
    STAGING_PREFIX,
    VersionExists,
    latest_manifest,
    latest_version,
    latest_version_dir,
    next_version,
    scan_repository,
    staged_version,
    versions_on_disk,
)


def version(model_dir: Path, name: str, manifest: dict | str | None = None) -> Path:
    """A folder `model_dir/name`, with a manifest.json unless `manifest` is None."""
    folder = model_dir / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    if manifest is not None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        (folder / MANIFEST_FILE).write_text(text)
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """tiny: versions 1, 2 and 10 published; beside them what a reader must not take for a version."""
    folder = tmp_path / "repo" / "tiny"
    for number in (1, 2, 10):
        version(folder, str(number), {"version": number, "family": "tiny"})
    version(folder, "11")  # numbered, no manifest yet: a copy in progress
    version(folder, f"{STAGING_PREFIX}12-abc", {"version": 12})  # an export being written
    version(folder, ".hidden", {"version": 13})
    for odd in ("01", "¹", "3a", "v4", "-5", " 6"):  # not canonical ASCII decimals ("¹".isdigit() is True)
        version(folder, odd, {"version": 99})
    (folder / "7").write_text("a file, not a folder")
    (folder / "8").mkdir()
    (folder / "8" / MANIFEST_FILE).mkdir()  # a manifest that is not a file
    return folder


def test_versions_are_numeric_folders_holding_a_manifest(model_dir: Path) -> None:
    assert versions_on_disk(model_dir) == [1, 2, 10]  # numerically sorted, not "10" < "2"
    assert latest_version(model_dir) == 10
    assert latest_version_dir(model_dir) == model_dir / "10"
    assert latest_manifest(model_dir) == {"version": 10, "family": "tiny"}


def test_a_missing_or_empty_model_has_no_versions(tmp_path: Path) -> None:
    assert versions_on_disk(tmp_path / "absent") == [] and latest_version(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert latest_version_dir(tmp_path / "empty") is None and latest_manifest(tmp_path / "empty") is None
    (tmp_path / "file").write_text("x")
    assert versions_on_disk(tmp_path / "file") == []


def test_latest_manifest_falls_back_past_a_damaged_one(model_dir: Path) -> None:
    (model_dir / "10" / MANIFEST_FILE).write_text("{not json")
    assert latest_version(model_dir) == 10  # still on disk: the service decides what to do with it
    assert latest_manifest(model_dir) == {"version": 2, "family": "tiny"}


def test_scan_lists_models_with_a_version_and_reports_odd_folders(model_dir: Path) -> None:
    repository = model_dir.parent
    version(repository / "lookup", "3", {"version": 3})
    (repository / "no_versions" / "1").mkdir(parents=True)  # no manifest: not a model yet
    version(repository / ".staging-model", "1", {"version": 1})
    warnings: list[tuple[str, str]] = []
    found = scan_repository(repository, lambda key, message, *args: warnings.append((key, message % args)))
    assert found == {"lookup": [3], "tiny": [1, 2, 10]}
    skipped = {key for key, _ in warnings}
    assert skipped == {f"tiny/{odd}" for odd in ("01", "¹", "3a", "v4", "-5", " 6")}  # folders only, not "7"
    assert all("version folders are named by ASCII digits" in message for _, message in warnings)
    assert scan_repository(repository / "absent") == {}


def test_next_version_is_above_every_number_taken(model_dir: Path, tmp_path: Path) -> None:
    # 11 (no manifest yet) holds its number; the staging folder's 12 and the odd names do not count.
    assert next_version(model_dir) == 12
    assert next_version(tmp_path / "new-model") == 1


def test_staged_version_publishes_the_whole_folder_in_one_step(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "tiny"
    with staged_version(model_dir) as (staging, number):
        assert number == 1 and staging.parent == model_dir and staging.name.startswith(f"{STAGING_PREFIX}1-")
        (staging / "model.onnx").write_bytes(b"graph")
        assert versions_on_disk(model_dir) == []  # readers see nothing until the block ends
        (staging / MANIFEST_FILE).write_text("{}")
        assert versions_on_disk(model_dir) == []
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [MANIFEST_FILE, "model.onnx"]
    assert (model_dir / "1").stat().st_mode & 0o777 == 0o755  # readable by a service running as another user
    with staged_version(model_dir) as (_, number):
        pass
    assert number == 2


def test_a_failing_writer_leaves_no_partial_folder(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    version(model_dir, "1", {"version": 1})
    with pytest.raises(RuntimeError, match="writer failed"), staged_version(model_dir) as (staging, number):
        (staging / "model.onnx").write_bytes(b"half a graph")
        (staging / "sub").mkdir()
        (staging / "sub" / "table.bin").write_bytes(b"x")
        raise RuntimeError("writer failed")
    assert number == 2
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
    assert versions_on_disk(model_dir) == [1] and next_version(model_dir) == 2


def test_versions_are_immutable(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    first = version(model_dir, "3", {"version": 3})
    with pytest.raises(VersionExists, match="already exists"), staged_version(model_dir, 3):
        pass
    assert sorted(p.name for p in model_dir.iterdir()) == ["3"] and (first / MANIFEST_FILE).is_file()


def test_a_version_published_meanwhile_is_not_written_over(tmp_path: Path) -> None:
    """Two writers pick the same number: the second's rename fails, and its staging folder goes."""
    model_dir = tmp_path / "tiny"
    with pytest.raises(VersionExists), staged_version(model_dir) as (staging, number):
        (staging / MANIFEST_FILE).write_text('{"writer": 2}')
        version(model_dir, str(number), {"writer": 1})
    assert os.listdir(model_dir) == ["1"]
    assert json.loads((model_dir / "1" / MANIFEST_FILE).read_text()) == {"writer": 1}


def test_only_version_numbers_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a version number"), staged_version(tmp_path / "tiny", -1):
        pass
    assert os.listdir(tmp_path / "tiny") == []
