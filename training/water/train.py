"""Train the water MAE.

    python -m training.water.train --config small --steps 600 --out runs/water
    python -m training.water.train --config small --data path/to/samples --val-fraction 0.1 --out runs/water

Writes `best.pt` (lowest validation loss), `last.pt` and `metrics.json` (per-modality losses) to --out, and
`train_state.pt` (at each validation, every --save-every seconds and on SIGTERM / SIGINT), which --resume
continues exactly. A checkpoint holds the model config, the weights, the normalisation statistics and the
climatology table. The loop is training/loop.py's.

`train(config, out_dir, data)` is the family's entry point (a dataset folder or synthetic splits);
`fit(model_config, train_data, val_data, training)` is the trainer on arrays under it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import torch

from families.water.contract import Normalisation
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, NormStats, fill_hidden
from training import loop
from training.checkpoints import Checkpoint, TrainResult, read_checkpoint, save_checkpoint
from training.water import data as water_data
from training.water.baselines import climatology_table
from training.water.config import TrainingConfig, WaterConfig, WaterModelConfig, load_config
from training.water.masking import scenario_masks, training_masks
from training.water.model import WaterMAE, count_parameters, loss_terms, patchify, unpatchify

FAMILY = "water"
Log = Callable[[str], None] | None


@dataclass
class TokenisedData:
    """Normalised token tensors of a dataset, plus which tokens have missing data."""

    tokens: dict[str, torch.Tensor]
    missing: dict[str, torch.Tensor]
    static: torch.Tensor

    device: str = "cpu"

    def batch(self, index: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        idx = torch.as_tensor(index)
        d = self.device
        return ({m: t[idx].to(d) for m, t in self.tokens.items()}, {m: t[idx].to(d) for m, t in self.missing.items()},
                self.static[idx].to(d))


def prepare(data: water_data.WaterData, stats: NormStats, cfg: WaterModelConfig) -> TokenisedData:
    tokens, missing = {}, {}
    for m in MODALITIES:
        values = torch.from_numpy(stats.normalise(m, data.fields[m]))
        tok = patchify(values, cfg.patch) if m in IMAGE_MODALITIES else values[:, :, None]
        nan = torch.isnan(tok)
        missing[m] = nan.any(-1)
        tokens[m] = torch.where(nan, 0.0, tok)
    static = torch.from_numpy(stats.normalise_static(data.static))
    if torch.isnan(static).any():
        raise ValueError("static attributes contain NaN; every sample needs all static attributes")
    return TokenisedData(tokens, missing, static)


def check_shapes(data: water_data.WaterData, cfg: WaterModelConfig) -> None:
    for m in MODALITIES:
        want = (cfg.frames, cfg.height, cfg.width) if m in IMAGE_MODALITIES else (cfg.series_len,)
        if data.fields[m].shape[1:] != want:
            raise ValueError(f"{m}: data shape {data.fields[m].shape[1:]} != config {want}")


def with_prior(cfg: WaterModelConfig, tokens: dict[str, torch.Tensor],
               hidden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tokens whose hidden positions hold the gap-filling prior (computed at value level, as in serving)."""
    out = {}
    hp, wp = cfg.grid_patches
    for m in MODALITIES:
        b = tokens[m].shape[0]
        if m in IMAGE_MODALITIES:
            values = unpatchify(tokens[m], cfg.frames, cfg.height, cfg.width, cfg.patch).cpu().numpy()
            mask = hidden[m].reshape(b, cfg.frames, hp, wp).cpu().numpy()
            prior = torch.from_numpy(fill_hidden(values, mask, True, cfg.patch))
            out[m] = patchify(prior, cfg.patch).reshape(b, -1, cfg.patch**2)
        else:
            prior = fill_hidden(tokens[m][:, :, 0].cpu().numpy(), hidden[m].cpu().numpy(), False, cfg.patch)
            out[m] = torch.from_numpy(prior)[:, :, None]
        out[m] = out[m].to(tokens[m].device)
    return out


Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor],
              dict[str, torch.Tensor]]


def make_batch(cfg: WaterModelConfig, prep: TokenisedData, index: np.ndarray, masks: dict[str, np.ndarray]) -> Batch:
    """(model input tokens, target tokens, static, hidden, scored); the inputs carry the prior if prior_fill."""
    tokens, missing, static = prep.batch(index)
    hidden = {m: torch.from_numpy(masks[m]).to(prep.device) | missing[m] for m in MODALITIES}
    scored = {m: hidden[m] & ~missing[m] for m in MODALITIES}
    inputs = with_prior(cfg, tokens, hidden) if cfg.prior_fill else tokens
    return inputs, tokens, static, hidden, scored


def batch_loss(model: WaterMAE, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    inputs, targets, static, hidden, scored = batch
    return loss_terms(model, inputs, static, hidden, scored, generator, targets=targets)


@torch.no_grad()
def validate(model: WaterMAE, prep: TokenisedData, cfg: WaterModelConfig, batch_size: int,
             seed: int = 1234) -> dict[str, float]:
    """Per-modality masked MSE over random75 and days masks (fixed seed), in normalised units."""
    model.eval()
    rng = np.random.default_rng(seed)
    sums = {m: 0.0 for m in MODALITIES}
    count = 0
    n = prep.static.shape[0]
    for scenario in ("random75", "days"):
        for start in range(0, n, batch_size):
            index = np.arange(start, min(n, start + batch_size))
            losses = batch_loss(model, make_batch(cfg, prep, index, scenario_masks(scenario, rng, len(index), cfg)))
            for m in MODALITIES:
                sums[m] += float(losses[m]) * len(index)
            count += len(index)
    result = {m: sums[m] / count for m in MODALITIES}
    result["total"] = sum(result[m] for m in MODALITIES)
    return result


@dataclass
class FitResult:
    """What `fit` trained: the model (best validation weights, CPU, eval mode) and what its checkpoint holds."""

    model: WaterMAE
    stats: NormStats
    climatology: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    seconds: float = 0.0
    steps: int = 0
    missing_fraction: dict[str, float] = field(default_factory=dict)  # of the training split (drift reference)
    finished: bool = True  # False when a signal stopped the run (`training.resume` continues it)

    def metrics(self) -> dict[str, Any]:
        return {"best_val": self.best_val, "steps": self.steps, "seconds": round(self.seconds, 2),
                "parameters": count_parameters(self.model)}


def checkpoint_payload(result: FitResult, data_description: str, training: TrainingConfig) -> dict[str, Any]:
    """The checkpoint's content (`save_checkpoint` adds the family tag); the model's current weights."""
    return {
        "config": result.model.cfg.to_dict(),
        "model": result.model.state_dict(),
        "stats": Normalisation.of(result.stats).model_dump(),
        "climatology": {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in result.climatology.items()},
        "metrics": {"best_val": result.best_val, "history": result.history, "seconds": result.seconds,
                    "steps": result.steps, "parameters": count_parameters(result.model)},
        "data": data_description,
        "missing_fraction": result.missing_fraction,
        "training": asdict(training),
    }


class BatchFeeder:
    """Training batches: indices and masks drawn in order on the caller's thread (deterministic), the batches
    (with the numpy gap-filling prior, the slow part on a GPU) built ahead on `training.workers` threads."""

    def __init__(self, cfg: WaterModelConfig, prep: TokenisedData, rng: np.random.Generator,
                 training: TrainingConfig, count: int) -> None:
        self._cfg, self._prep, self._rng = cfg, prep, rng
        self._size = min(training.batch_size, len(prep.static))
        self._remaining = count  # batches still to draw
        self._pool = ThreadPoolExecutor(max_workers=max(1, training.workers))
        self._pending: deque[tuple[dict[str, Any], Future[Batch]]] = deque()  # (rng state before, batch)
        for _ in range(min(count, max(1, training.workers))):
            self._draw()

    def _draw(self) -> None:
        before = self._rng.bit_generator.state
        index = self._rng.choice(len(self._prep.static), size=self._size, replace=False)
        masks = training_masks(self._rng, len(index), self._cfg)
        self._pending.append((before, self._pool.submit(make_batch, self._cfg, self._prep, index, masks)))
        self._remaining -= 1

    def next(self) -> Batch:
        batch = self._pending.popleft()[1].result()
        if self._remaining > 0:
            self._draw()
        return batch

    def rng_state(self) -> dict[str, Any]:
        """The generator's state before the first batch not taken yet: what a resumed run draws on from."""
        return self._pending[0][0] if self._pending else self._rng.bit_generator.state

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def training_step(model: WaterMAE, optimizer: torch.optim.Optimizer, batch: Batch,
                  generator: torch.Generator) -> dict[str, float]:
    """One optimiser step on `batch`; returns the per-modality losses."""
    model.train()
    losses = batch_loss(model, batch, generator)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return {m: float(losses[m].detach()) for m in MODALITIES}


class WaterTask(loop.Task):
    """Random batches with the training masks; AdamW with a linear warm-up over the first 5 % of the steps,
    then cosine decay to zero; validated every `eval_every` steps on the per-modality masked MSE."""

    def __init__(self, result: FitResult, train_prep: TokenisedData, val_prep: TokenisedData,
                 training: TrainingConfig, data_description: str, log: Log) -> None:
        self.result, self.model, self.cfg = result, result.model, result.model.cfg
        self.train_prep, self.val_prep, self.training = train_prep, val_prep, training
        self.data_description, self.log = data_description, log
        self.optimiser = loop.make_optimiser(self.model.parameters(), "adamw", training.lr, weight_decay=0.05,
                                             betas=(0.9, 0.95))
        self.schedule = loop.warmup_cosine(training.steps, max(1, training.steps // 20))
        self.rng = np.random.default_rng(training.seed)  # batches and masks
        self.generator = torch.Generator().manual_seed(training.seed)  # the decoded share of the masked tokens
        self.feeder: BatchFeeder | None = None

    def step(self, index: int) -> dict[str, float]:
        if self.feeder is None:
            self.feeder = BatchFeeder(self.cfg, self.train_prep, self.rng, self.training, self.training.steps - index)
        return training_step(self.model, self.optimiser, self.feeder.next(), self.generator)

    def validate(self, progress: loop.Progress) -> float:
        """Validate and append the history entry (training losses averaged since the last one)."""
        val = validate(self.model, self.val_prep, self.cfg, batch_size=64)
        running = progress.running
        entry = {"step": progress.step, "seconds": round(progress.seconds, 2),
                 "train": {m: sum(r[m] for r in running) / max(len(running), 1) for m in MODALITIES}, "val": val}
        self.result.history.append(entry)
        if self.log:
            train_total = round(sum(entry["train"].values()), 4)
            self.log(json.dumps({"step": progress.step, "seconds": entry["seconds"], "train_total": train_total,
                                 "val": {k: round(v, 4) for k, v in val.items()}}))
        return val["total"]

    def checkpoint(self, progress: loop.Progress, kind: str) -> dict[str, Any]:
        self.result.best_val, self.result.steps, self.result.seconds = (progress.best_score, progress.step,
                                                                         progress.seconds)
        return checkpoint_payload(self.result, self.data_description, self.training)

    def identity(self) -> dict[str, Any]:
        return {"model": self.cfg.to_dict(), "batch_size": self.training.batch_size, "lr": self.training.lr,
                "seed": self.training.seed, "steps": self.training.steps}

    def state_dict(self) -> dict[str, Any]:
        rng = self.feeder.rng_state() if self.feeder else self.rng.bit_generator.state
        return {"history": self.result.history, "rng": rng, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.result.history = state["history"]
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.close()


def checkpoint_step(result: FitResult, out_dir: Path, name: str, data_description: str,
                    training: TrainingConfig) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(FAMILY, checkpoint_payload(result, data_description, training), out_dir / name)


def fit(cfg: WaterModelConfig, train_data: water_data.WaterData, val_data: water_data.WaterData,
        training: TrainingConfig, *, out_dir: Path | None = None, data_description: str = "",
        log: Log = None) -> FitResult:
    """Train on arrays (training/loop.py's loop); keeps the weights with the lowest validation loss. With
    `out_dir`: `last.pt` at each evaluation, `train_state.pt` (what `training.resume` continues), then
    `best.pt` and `metrics.json`; without it the loop's files go to a temporary folder."""
    check_shapes(train_data, cfg)
    check_shapes(val_data, cfg)
    loop.seed_everything(training.seed)
    stats = NormStats.fit(train_data.fields, train_data.static)
    result = FitResult(WaterMAE(cfg), stats, climatology_table(train_data.fields),
                       missing_fraction={m: float(np.isnan(train_data.fields[m]).mean()) for m in MODALITIES})
    model = result.model.to(training.device)
    train_prep, val_prep = prepare(train_data, stats, cfg), prepare(val_data, stats, cfg)
    train_prep.device = val_prep.device = training.device
    task = WaterTask(result, train_prep, val_prep, training, data_description, log)
    settings = loop.LoopConfig(steps=training.steps, seconds=training.time_limit_s, eval_every=training.eval_every,
                               save_every_s=training.save_every_s, threads=training.threads, resume=training.resume,
                               latest="last.pt")
    with ExitStack() as stack:
        folder = Path(out_dir) if out_dir is not None else Path(stack.enter_context(TemporaryDirectory()))
        outcome = loop.run(task, settings, folder, FAMILY, log=log)
        result.seconds, result.steps, result.best_val = (outcome.progress.seconds, outcome.progress.step,
                                                         outcome.progress.best_score)
        result.finished = outcome.finished
        if outcome.finished:  # the best validation's weights
            model.load_state_dict(read_payload(folder / "best.pt")["model"])
    model.cpu().eval()
    if out_dir is not None and outcome.finished:
        checkpoint_step(result, out_dir, "best.pt", data_description, training)
        (out_dir / "metrics.json").write_text(json.dumps({**result.metrics(), "history": result.history}, indent=2))
    return result


def synthetic_splits(cfg: WaterModelConfig, n_train: int, n_val: int, seed: int) -> tuple[water_data.WaterData, ...]:
    train_data = water_data.generate(n_train, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=seed)
    val_data = water_data.generate(n_val, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=seed + 1)
    return train_data, val_data


def dataset_splits(cfg: WaterModelConfig, folder: Path,
                   val_fraction: float) -> tuple[WaterModelConfig, water_data.WaterData, water_data.WaterData]:
    """A dataset folder (or stacked NPZ) split into training and its last `val_fraction` for validation; the
    model config takes its grid and series sizes from the files."""
    full = water_data.load(folder)
    shape = full.fields["precip"].shape
    cfg = replace(cfg, frames=shape[1], height=shape[2], width=shape[3], series_len=full.fields["evap"].shape[1])
    train_data, val_data = full.split(max(1, int(round(len(full) * val_fraction))))
    return cfg, train_data, val_data


def train(config: WaterConfig, out_dir: Path, data: Path | None = None, *, log: Log = print) -> TrainResult:
    """Train `config` on the dataset folder `data` (format: training/water/data.py), or on synthetic splits of
    `config.training.n_train` / `n_val` samples; writes best.pt, last.pt and metrics.json to `out_dir`."""
    training, out_dir = config.training, Path(out_dir)
    if data is None:
        cfg = config.model
        train_data, val_data = synthetic_splits(cfg, training.n_train, training.n_val, training.seed)
        description = (f"synthetic (training.water.data.generate, seed {training.seed}, "
                       f"{training.n_train} train / {training.n_val} val)")
    else:
        cfg, train_data, val_data = dataset_splits(config.model, Path(data), training.val_fraction)
        description = f"files: {data} ({len(train_data)} train / {len(val_data)} val)"
    if log:
        log(f"parameters: {count_parameters(WaterMAE(cfg)):,}")
    result = fit(cfg, train_data, val_data, training, out_dir=out_dir, data_description=description, log=log)
    if not result.finished:
        return TrainResult(best_checkpoint=out_dir / "best.pt", out_dir=out_dir,
                           summary={**result.metrics(), "finished": False, "state": str(out_dir / loop.STATE)})
    if log:
        log(f"best validation loss {result.best_val:.4f} after {result.steps} steps in {result.seconds:.1f}s; "
            f"checkpoint {out_dir / 'best.pt'}")
    return TrainResult(best_checkpoint=out_dir / "best.pt", out_dir=out_dir, summary=result.metrics())


def read_payload(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict; files from before the family tag are recognised by the keys they always had."""
    return read_checkpoint(path, FAMILY, legacy=lambda p: {"config", "model", "stats", "climatology"} <= p.keys())


def load_checkpoint(path: Path) -> Checkpoint:
    """The model (eval mode, CPU), its config and, in `extras`: `stats` (NormStats), `climatology`, `metrics`,
    `data`, `missing_fraction` (None in older checkpoints) and `evaluation` (default models only)."""
    payload = read_payload(path)
    config = WaterModelConfig.from_dict(payload["config"])
    model = WaterMAE(config)
    model.load_state_dict(payload["model"])
    extras = {
        "stats": Normalisation.model_validate(payload["stats"]).norm_stats(),
        "climatology": {m: v.numpy() for m, v in payload["climatology"].items()},
        "metrics": payload.get("metrics", {}),
        "data": payload.get("data", ""),
        "missing_fraction": payload.get("missing_fraction"),
        "evaluation": payload.get("evaluation"),
    }
    return Checkpoint(family=FAMILY, path=Path(path), model=model.eval(), config=config, extras=extras)


def run_config(args: argparse.Namespace) -> WaterConfig:
    """The preset or file of --config with the model overrides of --set and the training flags given."""
    config = load_config(args.config)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    config.model = replace(config.model, **overrides)
    given = {name: getattr(args, name) for name in TRAINING_FLAGS if getattr(args, name) is not None}
    config.training = replace(config.training, **given, **loop.given_flags(args, {"seconds": "time_limit_s"}))
    return config


TRAINING_FLAGS = ("batch_size", "lr", "eval_every", "n_train", "n_val", "val_fraction", "device", "workers")


def main(argv: list[str] | None = None) -> None:
    defaults = TrainingConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small", help="preset (fast, small, full) or JSON file (default: small)")
    loop.add_flags(parser, out_default=Path("runs/water"), aliases={"seconds": ["--time-limit"]}, threads_default=1,
                   help={"steps": f"default: {defaults.steps}", "seed": f"default: {defaults.seed}",
                         "seconds": "stop after this many seconds of training",
                         "threads": "torch CPU threads (default 1: the fastest on a small shared CPU)"})
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="model config override, e.g. --set use_weighted_fm=true --set height=290")
    parser.add_argument("--data", type=Path, help="sample folder or stacked NPZ (default: synthetic)")
    parser.add_argument("--val-fraction", type=float, help=f"default: {defaults.val_fraction}")
    parser.add_argument("--n-train", type=int, help=f"synthetic training samples (default: {defaults.n_train})")
    parser.add_argument("--n-val", type=int, help=f"synthetic validation samples (default: {defaults.n_val})")
    parser.add_argument("--batch-size", type=int, help=f"default: {defaults.batch_size}")
    parser.add_argument("--lr", type=float, help=f"default: {defaults.lr}")
    parser.add_argument("--eval-every", type=int, help=f"default: {defaults.eval_every}")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--workers", type=int, help="threads building batches ahead (default: 1)")
    args = parser.parse_args(argv)
    train(run_config(args), args.out, args.data, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
