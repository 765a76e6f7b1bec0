"""The one training skeleton (training/loop.py): every family's CLI has --resume, and a real run stopped by
SIGTERM in a subprocess and resumed with --resume ends with the weights of an uninterrupted run."""

from __future__ import annotations

import importlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.loop import LoopConfig, Progress, Task, make_optimiser, run, seed_everything, step_decay, warmup_cosine

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("tiny", "traffic", "weld", "water", "imagecodec")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_training_cli_has_resume(family: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(f"training.{family}.train").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--resume", "--out", "--seed", "--steps", "--seconds"):
        assert flag in text, (family, flag)


# ---- a real run, interrupted and resumed ----------------------------------------------------------------

def _tiny(tmp_path: Path) -> list[str]:
    return ["--steps", "1500", "--hidden", "16"]


def _traffic(tmp_path: Path) -> list[str]:
    return ["--config", "tiny", "--epochs", "2", "--max-batches-per-epoch", "3"]


def _water(tmp_path: Path) -> list[str]:
    return ["--config", "fast", "--steps", "6", "--eval-every", "3", "--n-train", "16", "--n-val", "4",
            "--batch-size", "4"]


def _weld(tmp_path: Path) -> list[str]:
    from training.weld.synthetic import generate

    data = tmp_path / "weld-data"
    generate(data, train=3, val=1, test=1, seed=0)
    return ["--data", str(data), "--epochs", "2"]


RUNS = {"tiny": _tiny, "traffic": _traffic, "water": _water, "weld": _weld}


def _command(family: str, argv: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", f"training.{family}.train", *argv, "--threads", "1", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _state(out: Path) -> dict:
    return torch.load(out / "train_state.pt", map_location="cpu", weights_only=False)


def _interrupted(family: str, argv: list[str], out: Path) -> int:
    """Start the run in a subprocess saving its state every step, SIGTERM it once a state exists; the step
    it stopped at."""
    state = out / "train_state.pt"
    process = subprocess.Popen([*_command(family, argv, out), "--save-every", "0"], cwd=ROOT, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    return _state(out)["progress"]["step"]


# weld's run costs ~30 s of CPU (three processes importing transformers): with the slow tests
@pytest.mark.parametrize("family", ["tiny", "traffic", "water", pytest.param("weld", marks=pytest.mark.slow)])
def test_sigterm_then_resume_gives_the_uninterrupted_weights(family: str, tmp_path: Path) -> None:
    argv = RUNS[family](tmp_path)
    straight = subprocess.run(_command(family, argv, tmp_path / "straight"), cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    total = _state(tmp_path / "straight")["progress"]["step"]

    stopped_at = _interrupted(family, argv, tmp_path / "resumed")
    assert 0 < stopped_at < total, f"the signal did not land mid-run (step {stopped_at} of {total})"
    resumed = subprocess.run([*_command(family, argv, tmp_path / "resumed"), "--resume"], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert b["progress"]["step"] == total
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differing = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differing, f"{family}: resumed run diverged in {differing[:5]}"
    assert a["progress"]["best_step"] == b["progress"]["best_step"]
    assert a["progress"]["best_score"] == b["progress"]["best_score"] or (
        math.isnan(a["progress"]["best_score"]) and math.isnan(b["progress"]["best_score"]))


# ---- the loop on its own --------------------------------------------------------------------------------

class _Line(Task):
    """y = 3x with one weight; validation is the weight's distance to 3 (or scores given in advance)."""

    def __init__(self, scores: list[float] | None = None) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.optimiser = make_optimiser(self.model.parameters(), "adam", 0.1)
        self.scores = scores
        self.validations: list[tuple[int, bool]] = []

    def step(self, index: int) -> dict[str, float]:
        x = torch.randn(8, 1)
        loss = torch.nn.functional.mse_loss(self.model(x), 3 * x)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        return {"loss": float(loss.detach())}

    def validate(self, progress: Progress) -> float:
        if self.scores is not None:
            return self.scores[len(self.validations)]
        return abs(float(self.model.weight.detach()) - 3)

    def checkpoint(self, progress: Progress, kind: str) -> dict:
        return {"state_dict": self.model.state_dict(), "step": progress.step}

    def validated(self, progress: Progress, improved: bool) -> None:
        self.validations.append((progress.step, improved))


def test_validation_cadence_best_latest_and_patience(tmp_path: Path) -> None:
    seed_everything(0)
    task = _Line(scores=[3.0, 2.0, 2.5, 2.4, 1.0])
    result = run(task, LoopConfig(steps=100, eval_every=2, patience=2), tmp_path, "line")
    assert result.reason == "patience" and result.progress.step == 8
    assert task.validations == [(2, True), (4, True), (6, False), (8, False)]
    assert torch.load(tmp_path / "best.pt", weights_only=False)["step"] == 4
    assert torch.load(tmp_path / "latest.pt", weights_only=False)["step"] == 8
    # resuming a run that has ended continues nothing and validates nothing again
    again = run(_Line(scores=[]), LoopConfig(steps=100, eval_every=2, patience=2, resume=True), tmp_path, "line")
    assert again.reason == "patience" and again.progress.step == 8


def test_non_finite_scores_let_best_follow_the_latest(tmp_path: Path) -> None:
    task = _Line(scores=[1.0, math.nan, math.nan])
    result = run(task, LoopConfig(steps=6, eval_every=2, patience=1), tmp_path, "line")
    assert result.reason == "steps" and [i for _, i in task.validations] == [True, True, True]
    assert result.progress.best_score == 1.0 and result.progress.best_step == 6


def test_resume_refuses_another_run_and_another_family(tmp_path: Path) -> None:
    class Other(_Line):
        def identity(self) -> dict:
            return {"lr": 1.0}

    run(_Line(), LoopConfig(steps=2), tmp_path, "line")
    with pytest.raises(ValueError, match="another run .*lr"):
        run(Other(), LoopConfig(steps=4, resume=True), tmp_path, "line")
    with pytest.raises(ValueError, match="not a circle training state"):
        run(_Line(), LoopConfig(steps=4, resume=True), tmp_path, "circle")


def test_schedules_are_factors_of_the_run_fraction(tmp_path: Path) -> None:
    cosine = warmup_cosine(100, 10)
    assert cosine(0.0) == pytest.approx(0.1) and cosine(0.09) == pytest.approx(0.98, abs=1e-2)
    assert cosine(1.0) == pytest.approx(0.0, abs=1e-9)
    decay = step_decay((0.8, 0.95), 0.3)
    assert (decay(0.5), decay(0.9), decay(0.99)) == (1.0, pytest.approx(0.3), pytest.approx(0.09))
    task = _Line()
    task.schedule = lambda fraction: 1 - fraction
    run(task, LoopConfig(steps=4, latest=None), tmp_path, "line")
    assert task.optimiser.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 3 / 4))  # set before the last step
