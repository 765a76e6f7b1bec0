"""The one training skeleton: seeding, threads, optimiser and schedule, the step loop, validation cadence,
best/latest checkpoints, `--resume` and SIGTERM / SIGINT. Each family supplies its `Task`.

A family's `train(config, out_dir, data=None, *, log)` seeds (`seed_everything`), builds its task (model,
optimiser, batches, one step, validation, checkpoint payload) and calls `run(task, LoopConfig(...), out_dir,
family)`. The loop then

- steps until `steps` optimiser steps, the `seconds` training-time budget (summed over resumed runs),
  `patience` validations without improvement, or a signal;
- sets every parameter group's learning rate to its `base_lr` x `task.schedule(fraction of the run done)`
  before each step (by steps, or by seconds for a time-budgeted schedule): a pure function of the progress,
  so resuming needs no scheduler state;
- validates every `eval_every` steps (an epoch's batches for the epoch-based families) and once more at the
  end; the lowest score is "best" (a non-finite score means "no usable validation": best follows the
  latest); `<out>/<latest>` is written at each validation and `<out>/<best>` when it improved, both through
  `training.checkpoints.save_checkpoint` with the family's payload;
- writes `<out>/train_state.pt` (weights, optimiser, step, clock, best so far, python/numpy/torch RNGs and the
  task's own state: samplers' RNGs, history) at each validation, every `save_every_s` seconds and when
  SIGTERM / SIGINT arrives; a signal ends the run after its current step. `resume=True` continues that
  file exactly: an interrupted run resumed gives the weights of an uninterrupted one with the same seed.

`add_flags` gives every family's CLI the same `--out --resume --seed --steps --seconds --threads
--save-every` flags.

The codec (training/imagecodec/train.py) is not ported: a long run depends on its `train_state.pt` format
(top-level "progress", "schedule", "torch_rng", "cuda_rng", "numpy_rng", "crops_rng"), so it keeps its own
loop and takes only `stop_on_signals` from here. It maps onto this module as: `training_step` on
`crops.batch` = `Task.step`; `validate` with the real coder (cost = bpp + lambda x 255^2 x MSE) =
`Task.validate` with `eval_every`; `checkpoint.pt` = `best` (no latest file); `make_optimiser` +
`schedule_step` = Adam with `step_decay((0.8, 0.95), 0.3)` by steps, or by seconds when `--seconds` is given
(`schedule_clock="seconds"`); its `Progress.step/seconds/best_cost/best_step` = `Progress` here, its
`history`/`validations` and the crop sampler's RNG = `Task.state_dict`; `_save_state`/`_resume` =
`save_state`/`restore_state`. Porting it means reading its old state files into those (a small converter).
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.checkpoints import FAMILY_KEY, save_atomic, save_checkpoint
from training.threads import torch_threads

STATE = "train_state.pt"  # everything `resume` needs
Log = Callable[[str], None] | None
Schedule = Callable[[float], float]  # learning-rate factor for the fraction (0..1) of the run done


# ---- seeding and RNG states -----------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's seeds CUDA too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The global generators' states (what `set_rng_states` restores)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---- optimiser and schedule -----------------------------------------------------------------------------

def make_optimiser(params: Iterable[Any], kind: Literal["adam", "adamw"], lr: float,
                   **options: Any) -> torch.optim.Optimizer:
    """Adam or AdamW over `params` (tensors or parameter groups; a group's `lr_scale` multiplies `lr`); each
    group keeps its peak rate as `base_lr`, which the schedule scales."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    for group in groups:
        group["lr"] = group["base_lr"] = lr * group.get("lr_scale", 1.0)
    optimiser = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    return optimiser(groups, lr=lr, **options)


def apply_schedule(optimiser: torch.optim.Optimizer, schedule: Schedule | None, fraction: float) -> None:
    if schedule is None:
        return
    factor = schedule(fraction)
    for group in optimiser.param_groups:
        group["lr"] = group["base_lr"] * factor


def warmup_cosine(steps: int, warmup_steps: int) -> Schedule:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `steps`."""
    def factor(fraction: float) -> float:
        step = fraction * steps
        return min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    return factor


def step_decay(milestones: Sequence[float], gamma: float) -> Schedule:
    """The rate times `gamma` once per milestone (fractions of the run) passed."""
    return lambda fraction: gamma ** sum(fraction > m for m in milestones)


# ---- what a family supplies -----------------------------------------------------------------------------

@dataclass
class Progress:
    """Where a run stands; `train_state.pt` holds it with the weights, the optimiser and the RNGs."""

    step: int = 0  # optimiser steps done
    seconds: float = 0.0  # training time over every resumed run
    best_score: float = math.inf
    best_step: int = -1  # step of the best validation (-1: none yet)
    stale: int = 0  # validations since the best
    validated_step: int = -1  # step of the last validation
    running: list[dict[str, float]] = field(default_factory=list)  # step metrics since the last validation


class Task:
    """A family's part of a run. Subclasses set `model` and `optimiser` (and `schedule`: None keeps the rates
    as they are) and implement `step`, `validate` and `checkpoint`; the rest is optional."""

    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    schedule: Schedule | None = None

    def step(self, index: int) -> dict[str, float]:
        """One optimiser step on the batch of step `index` (0-based, over the whole run); its metrics."""
        raise NotImplementedError

    def validate(self, progress: Progress) -> float:
        """The validation score at `progress.step` (lower is better; `progress.running` holds the steps'
        metrics since the last validation)."""
        raise NotImplementedError

    def checkpoint(self, progress: Progress, kind: Literal["best", "latest"]) -> dict[str, Any]:
        """The payload of `best` / `latest` (after `progress` counted this validation)."""
        raise NotImplementedError

    def validated(self, progress: Progress, improved: bool) -> None:
        """After a validation's checkpoints are written: logs, history files."""

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the state it continues (not its length)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The task's own resumable state (its samplers' RNGs, history...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s content."""

    def close(self) -> None:
        """Release what the steps hold (worker threads)."""


@dataclass
class LoopConfig:
    steps: int  # optimiser steps of the run
    seconds: float | None = None  # training-time budget over every resumed run (None: none)
    eval_every: int = 0  # steps between validations (0: only at the end)
    patience: int | None = None  # validations without improvement before stopping (None: never)
    min_delta: float = 0.0  # an improvement beats the best score by more than this
    horizon: int | None = None  # the schedule's length in steps (None: `steps`)
    schedule_clock: Literal["steps", "seconds"] = "steps"  # "seconds": the schedule follows the time budget
    save_every_s: float = 300.0  # seconds between resumable states (also at validations and on a signal)
    threads: int | None = None  # torch CPU threads during the run (None: leave the setting alone)
    resume: bool = False  # continue <out>/train_state.pt when it exists
    best: str = "best.pt"
    latest: str | None = "latest.pt"


@dataclass
class LoopResult:
    progress: Progress
    reason: Literal["steps", "seconds", "patience", "signal"]

    @property
    def finished(self) -> bool:
        """False when a signal stopped the run (`resume` continues it)."""
        return self.reason != "signal"


# ---- the loop -------------------------------------------------------------------------------------------

@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM / SIGINT while the block runs (main thread only), so the loop can save and end."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fraction(progress: Progress, loop: LoopConfig) -> float:
    if loop.schedule_clock == "seconds" and loop.seconds:
        return progress.seconds / loop.seconds
    return progress.step / max(loop.horizon or loop.steps, 1)


def _stop_reason(progress: Progress, loop: LoopConfig) -> str | None:
    if progress.step >= loop.steps:
        return "steps"
    if loop.seconds is not None and progress.seconds >= loop.seconds:
        return "seconds"
    if loop.patience is not None and progress.stale >= loop.patience:
        return "patience"
    return None


def save_state(path: Path, family: str, task: Task, progress: Progress) -> None:
    save_atomic({FAMILY_KEY: family, "run": task.identity(), "progress": asdict(progress),
                 "state_dict": task.model.state_dict(), "optimiser": task.optimiser.state_dict(),
                 "rng": rng_states(), "task": task.state_dict()}, path)


def restore_state(path: Path, family: str, task: Task) -> Progress:
    """Load `path` into `task` and the global RNGs; the progress it records."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get(FAMILY_KEY) != family or "progress" not in state:
        raise ValueError(f"{path} is not a {family} training state")
    identity = task.identity()
    if state["run"] != identity:
        differs = sorted(k for k in {*state["run"], *identity} if state["run"].get(k) != identity.get(k))
        raise ValueError(f"{path} is the state of another run (differs in {', '.join(differs)}); "
                         "resume with the same settings or use another --out")
    task.model.load_state_dict(state["state_dict"])
    task.optimiser.load_state_dict(state["optimiser"])
    task.load_state_dict(state["task"])
    set_rng_states(state["rng"])
    return Progress(**state["progress"])


def _validate(task: Task, loop: LoopConfig, progress: Progress, out_dir: Path, family: str) -> None:
    score = task.validate(progress)
    progress.running, progress.validated_step = [], progress.step
    usable = math.isfinite(score)
    improved = progress.best_step < 0 or not usable or score < progress.best_score - loop.min_delta
    if improved:
        progress.best_step, progress.stale = progress.step, 0
        progress.best_score = score if usable else progress.best_score
    else:
        progress.stale += 1
    if loop.latest:
        save_checkpoint(family, task.checkpoint(progress, "latest"), out_dir / loop.latest)
    if improved:
        save_checkpoint(family, task.checkpoint(progress, "best"), out_dir / loop.best)
    task.validated(progress, improved)


def run(task: Task, loop: LoopConfig, out_dir: Path, family: str, *, log: Log = None) -> LoopResult:
    """Train `task` per `loop`, writing checkpoints and `train_state.pt` to `out_dir` (see the module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    progress = Progress()
    if loop.resume and state_path.exists():
        progress = restore_state(state_path, family, task)
        if log:
            log(f"resumed {state_path} at step {progress.step} ({progress.seconds:.1f}s trained)")
    try:
        with torch_threads(loop.threads), stop_on_signals() as stop:
            run_start, run_base, last_save = time.perf_counter(), progress.seconds, time.monotonic()
            while (reason := _stop_reason(progress, loop)) is None and not stop.is_set():
                apply_schedule(task.optimiser, task.schedule, _fraction(progress, loop))
                progress.running.append(task.step(progress.step))
                progress.step += 1
                progress.seconds = run_base + time.perf_counter() - run_start
                if loop.eval_every and progress.step % loop.eval_every == 0:
                    _validate(task, loop, progress, out_dir, family)
                    save_state(state_path, family, task, progress)
                    last_save = time.monotonic()
                elif time.monotonic() - last_save >= loop.save_every_s:
                    save_state(state_path, family, task, progress)
                    last_save = time.monotonic()
            if reason is None:  # a signal: save where the run stands, validate nothing
                save_state(state_path, family, task, progress)
                if log:
                    log(f"stopped by a signal at step {progress.step}: --resume continues {state_path}")
                return LoopResult(progress, "signal")
            if progress.validated_step != progress.step:
                _validate(task, loop, progress, out_dir, family)
            save_state(state_path, family, task, progress)
    finally:
        task.close()
    return LoopResult(progress, reason)  # type: ignore[arg-type]


# ---- the shared CLI flags -------------------------------------------------------------------------------

FLAGS = ("seed", "steps", "seconds", "threads", "save_every_s")


def add_flags(parser: argparse.ArgumentParser, *, out_default: Path | None = None,
                   aliases: Mapping[str, Sequence[str]] | None = None,
                   help: Mapping[str, str] | None = None, threads_default: int | None = None) -> None:
    """--out (required unless `out_default`), --resume, --seed, --steps, --seconds, --threads, --save-every.
    Values left out are None (the config's own value stays); `aliases` keeps a family's older spelling of a
    flag working (e.g. {"seconds": ["--time-limit"]}), `help` replaces a flag's help text."""
    aliases, help = aliases or {}, help or {}
    texts = {
        "out": "output folder" + (f" (default: {out_default})" if out_default else ""),
        "resume": f"continue <out>/{STATE} exactly (weights, optimiser, step, clock, RNGs) when it exists",
        "seed": "random seed of the model, the batches and the masks",
        "steps": "optimiser steps of the run",
        "seconds": "training-time budget in seconds (over every resumed run)",
        "threads": "torch CPU threads during training",
        "save_every_s": f"seconds between resumable states in <out>/{STATE} (default: 300)",
        **help,
    }
    parser.add_argument("--out", *aliases.get("out", ()), type=Path, default=out_default,
                        required=out_default is None, help=texts["out"])
    parser.add_argument("--resume", action="store_true", help=texts["resume"])
    parser.add_argument("--seed", *aliases.get("seed", ()), type=int, default=None, help=texts["seed"])
    parser.add_argument("--steps", *aliases.get("steps", ()), type=int, default=None, help=texts["steps"])
    parser.add_argument("--seconds", *aliases.get("seconds", ()), dest="seconds", type=float, default=None,
                        metavar="SECONDS", help=texts["seconds"])
    parser.add_argument("--threads", type=int, default=threads_default, help=texts["threads"])
    parser.add_argument("--save-every", dest="save_every_s", type=float, default=None, metavar="SECONDS",
                        help=texts["save_every_s"])


def given_flags(args: argparse.Namespace, names: Mapping[str, str]) -> dict[str, Any]:
    """The loop flags given on the command line, renamed to the family's config fields by `names`
    (flag -> field; flags missing from `names` keep their name)."""
    given = {names.get(flag, flag): getattr(args, flag) for flag in FLAGS if getattr(args, flag) is not None}
    if args.resume:
        given[names.get("resume", "resume")] = True
    return given
