"""kill -9 of a real process in the middle of gallery enrolments leaves a readable gallery holding either
the content before or after an enrolment, never a torn file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from families.weld.gallery import ENROLLED_FILE, GalleryStore, npz_bytes

DIM = 512
BATCH = 1500  # rows per enrolment: each rewrite is several MB, so a kill often lands inside one

WRITER = f"""
import sys, numpy as np
from pathlib import Path
from families.weld.gallery import GalleryStore
store = GalleryStore(Path(sys.argv[1]), Path(sys.argv[2]))
print("ready", flush=True)
n = store.snapshot.size - store.snapshot.shipped
while True:
    rows = np.arange(n, n + {BATCH})
    emb = np.repeat(rows[:, None].astype(np.float32), {DIM}, axis=1)
    store.enroll(emb, (rows % 12).tolist(), [f"e{{j}}" for j in rows])
    n += {BATCH}
    print("enrolled", n, flush=True)
"""


def _check(state: Path, shipped: Path) -> int:
    """Open the gallery as the service does and verify every enrolled row; returns the enrolled count."""
    store = GalleryStore(shipped, state)
    snap = store.snapshot
    enrolled = snap.size - snap.shipped
    assert enrolled % BATCH == 0, f"torn gallery: {enrolled} enrolled rows"
    emb = snap.embeddings[snap.shipped:].numpy()
    rows = np.arange(enrolled)
    np.testing.assert_array_equal(emb, np.repeat(rows[:, None].astype(np.float32), DIM, axis=1))
    np.testing.assert_array_equal(snap.label_list[snap.shipped:], rows % 12)
    assert snap.ids[snap.shipped:].tolist() == [f"e{j}" for j in rows]
    return enrolled


def _kill_when_writing(state: Path, timeout: float = 10.0) -> None:
    """Wait until an enrolment's temporary file exists (a rewrite is under way), so the kill lands inside it."""
    deadline = time.monotonic() + timeout
    while not list(state.glob(f".{ENROLLED_FILE}.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.0005)


def test_kill_9_during_enrolment_keeps_old_or_new_gallery(tmp_path: Path) -> None:
    shipped = tmp_path / "gallery.npz"
    shipped.write_bytes(npz_bytes(np.zeros((10, DIM), np.float32), np.arange(10) % 12,
                                  np.array([f"s{i}" for i in range(10)])))
    state = tmp_path / "state"
    root = Path(__file__).resolve().parents[2]
    interrupted_writes = 0
    counts = []
    rng = np.random.default_rng(0)
    for trial in range(12):
        before = _check(state, shipped) if (state / ENROLLED_FILE).exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(shipped), str(state)], cwd=root,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.stdout.readline()  # at least one enrolment completed in this process
        if trial % 2:  # aimed: as soon as a rewrite has started
            _kill_when_writing(state)
        else:  # at a random moment, inside or between rewrites
            time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        leftovers = list(state.glob(f".{ENROLLED_FILE}.*.tmp"))
        interrupted_writes += bool(leftovers)
        for leftover in leftovers:  # what a crash leaves behind is ignored by readers; tidy up
            leftover.unlink()
        after = _check(state, shipped)
        assert after >= before + BATCH  # completed enrolments survived
        counts.append(after)
        if interrupted_writes >= 1 and trial >= 3:
            break
    # The kills really did land inside writes, not only between them.
    assert interrupted_writes >= 1, f"no kill hit a write in {len(counts)} trials: {counts}"
