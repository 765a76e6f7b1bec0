"""The device call's payload (benchmarks/gpu_payload.py, run by benchmarks/gpu_prepare.sh): the working tree
(tracked + untracked-not-ignored files) plus the carried .whl/ and .gpu/ must stay under the 64 MiB a call of
the lent device machine carries; what git ignores does not travel unless carried."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = [".whl", ".gpu"]  # what benchmarks/gpu_check.sh's device call names in `carry`

_spec = importlib.util.spec_from_file_location("gpu_payload", ROOT / "benchmarks" / "gpu_payload.py")
gpu_payload = importlib.util.module_from_spec(_spec)
sys.modules["gpu_payload"] = gpu_payload  # its dataclass looks its module up there
_spec.loader.exec_module(gpu_payload)


def test_this_checkout_with_its_carried_folders_fits_one_call() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_payload.py"),
                             *[arg for name in CARRY for arg in ("--carry", name)]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fits" in result.stdout.splitlines()[-1]


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_what_counts_tracked_untracked_and_carried_not_ignored(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n.whl/\n")
    (tmp_path / "tracked.bin").write_bytes(b"t" * 1000)
    _git(tmp_path, "add", "tracked.bin", ".gitignore")
    (tmp_path / "untracked.bin").write_bytes(b"u" * 300)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"i" * 5000)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "a.whl").write_bytes(b"w" * 700)
    found = gpu_payload.payload(tmp_path, [".whl"])
    assert found.tracked == 1000 + len("ignored/\n.whl/\n")
    assert found.untracked == 300  # the ignored folder does not travel
    assert found.carried == {".whl": 700}
    assert found.total == found.tracked + 300 + 700
    # Over the limit -> exit 1 (the limit given in MiB; 0.001 MiB ~ 1049 bytes).
    assert gpu_payload.main(["--root", str(tmp_path), "--carry", ".whl", "--limit-mib", "0.001"]) == 1
    assert gpu_payload.main(["--root", str(tmp_path), "--carry", ".whl", "--limit-mib", "1"]) == 0
