"""Train the water MAE.

    python -m training.water.train --config small --steps 600 --out runs/water
    python -m training.water.train --config small --data path/to/samples --val-fraction 0.1 --out runs/water

Writes `best.pt` (lowest validation loss), `last.pt` and `metrics.json` (per-modality losses) to --out.
A checkpoint holds the config, the weights, the normalisation statistics and the climatology table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, NormStats, fill_hidden
from training.checkpoints import save_atomic
from training.water import data as water_data
from training.water.baselines import climatology_table
from training.water.config import WaterConfig, fast_config, full_config, small_config
from training.water.masking import scenario_masks, training_masks
from training.water.model import WaterMAE, count_parameters, loss_terms, patchify, unpatchify

CONFIGS = {"fast": fast_config, "small": small_config, "full": full_config}


@dataclass
class Prepared:
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


def prepare(data: water_data.WaterData, stats: NormStats, cfg: WaterConfig) -> Prepared:
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
    return Prepared(tokens, missing, static)


def check_shapes(data: water_data.WaterData, cfg: WaterConfig) -> None:
    for m in MODALITIES:
        want = (cfg.frames, cfg.height, cfg.width) if m in IMAGE_MODALITIES else (cfg.series_len,)
        if data.fields[m].shape[1:] != want:
            raise ValueError(f"{m}: data shape {data.fields[m].shape[1:]} != config {want}")


def with_prior(cfg: WaterConfig, tokens: dict[str, torch.Tensor],
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


def make_batch(cfg: WaterConfig, prep: Prepared, index: np.ndarray, masks: dict[str, np.ndarray]) -> Batch:
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
def validate(model: WaterMAE, prep: Prepared, cfg: WaterConfig, batch_size: int, seed: int = 1234) -> dict[str, float]:
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
class TrainResult:
    model: WaterMAE
    stats: NormStats
    climatology: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    seconds: float = 0.0
    steps: int = 0
    missing_fraction: dict[str, float] = field(default_factory=dict)  # of the training split (drift reference)


def checkpoint_dict(result: TrainResult, data_description: str, state: dict | None = None) -> dict[str, Any]:
    return {
        "family": "water",
        "config": result.model.cfg.to_dict(),
        "model": state if state is not None else result.model.state_dict(),
        "stats": result.stats.to_dict(),
        "climatology": {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in result.climatology.items()},
        "metrics": {"best_val": result.best_val, "history": result.history, "seconds": result.seconds,
                    "steps": result.steps, "parameters": count_parameters(result.model)},
        "data": data_description,
        "missing_fraction": result.missing_fraction,
    }


def train(cfg: WaterConfig, train_data: water_data.WaterData, val_data: water_data.WaterData, *, steps: int,
          batch_size: int = 32, lr: float = 2e-3, seed: int = 0, time_limit: float | None = None,
          eval_every: int = 100, out_dir: Path | None = None, data_description: str = "",
          log: bool = True, device: str = "cpu", workers: int = 1) -> TrainResult:
    """Train with AdamW + warmup/cosine; keeps the weights with the lowest validation loss. `workers`
    threads build batches ahead (the numpy gap-filling prior is the slow part on a GPU)."""
    check_shapes(train_data, cfg)
    check_shapes(val_data, cfg)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    stats = NormStats.fit(train_data.fields, train_data.static)
    result = TrainResult(WaterMAE(cfg), stats, climatology_table(train_data.fields),
                         missing_fraction={m: float(np.isnan(train_data.fields[m]).mean()) for m in MODALITIES})
    model = result.model
    model.to(device)
    train_prep, val_prep = prepare(train_data, stats, cfg), prepare(val_data, stats, cfg)
    train_prep.device = val_prep.device = device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    best_state = None
    start = time.perf_counter()
    running = {m: 0.0 for m in MODALITIES}
    n_running = 0
    step = 0

    def next_batch() -> Future[Batch]:
        # Drawn in order on this thread (deterministic); the numpy prior is built on worker threads while
        # the previous steps run.
        index = rng.choice(len(train_data), size=min(batch_size, len(train_data)), replace=False)
        return pool.submit(make_batch, cfg, train_prep, index, training_masks(rng, len(index), cfg))

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    pending = deque(next_batch() for _ in range(min(steps, max(1, workers))))
    for step in range(1, steps + 1):
        model.train()
        batch = pending.popleft().result()
        if step + len(pending) < steps:
            pending.append(next_batch())
        losses = batch_loss(model, batch, generator)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        for m in MODALITIES:
            running[m] += float(losses[m].detach())
        n_running += 1
        out_of_time = time_limit is not None and time.perf_counter() - start > time_limit
        if step % eval_every == 0 or step == steps or out_of_time:
            val = validate(model, val_prep, cfg, batch_size=64)
            entry = {"step": step, "seconds": round(time.perf_counter() - start, 2),
                     "train": {m: running[m] / n_running for m in MODALITIES}, "val": val}
            result.history.append(entry)
            running, n_running = {m: 0.0 for m in MODALITIES}, 0
            if val["total"] < result.best_val:
                result.best_val = val["total"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if log:
                print(json.dumps({"step": step, "seconds": entry["seconds"],
                                  "train_total": round(sum(entry["train"].values()), 4),
                                  "val": {k: round(v, 4) for k, v in val.items()}}), flush=True)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                save_atomic(checkpoint_dict(result, data_description), out_dir / "last.pt")
        if out_of_time:
            break
    pool.shutdown(cancel_futures=True)
    result.seconds = time.perf_counter() - start
    result.steps = step
    if best_state is not None:
        model.load_state_dict(best_state)
    model.cpu().eval()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_atomic(checkpoint_dict(result, data_description), out_dir / "best.pt")
        (out_dir / "metrics.json").write_text(json.dumps(
            {"best_val": result.best_val, "steps": result.steps, "seconds": round(result.seconds, 2),
             "parameters": count_parameters(model), "history": result.history}, indent=2))
    return result


def load_checkpoint(path: Path) -> tuple[WaterMAE, NormStats, dict[str, np.ndarray], dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("family") != "water":
        raise ValueError(f"{path} is not a water checkpoint")
    model = WaterMAE(WaterConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    clim = {m: v.numpy() for m, v in ckpt["climatology"].items()}
    return model, NormStats.from_dict(ckpt["stats"]), clim, ckpt


def synthetic_splits(cfg: WaterConfig, n_train: int, n_val: int, seed: int) -> tuple[water_data.WaterData, ...]:
    train_data = water_data.generate(n_train, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=seed)
    val_data = water_data.generate(n_val, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=seed + 1)
    return train_data, val_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="config override, e.g. --set use_weighted_fm=true --set height=290")
    parser.add_argument("--data", type=Path, help="sample folder or stacked NPZ (default: synthetic)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--n-train", type=int, default=1536)
    parser.add_argument("--n-val", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/water"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a small shared CPU)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=1, help="threads building batches ahead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.data is not None:
        full = water_data.load(args.data)
        shape = full.fields["precip"].shape
        overrides = {"frames": shape[1], "height": shape[2], "width": shape[3],
                     "series_len": full.fields["evap"].shape[1], **overrides}
        n_val = max(1, int(round(len(full) * args.val_fraction)))
        train_data, val_data = full.split(n_val)
        description = f"files: {args.data} ({len(train_data)} train / {len(val_data)} val)"
    cfg = CONFIGS[args.config](**overrides)
    if args.data is None:
        train_data, val_data = synthetic_splits(cfg, args.n_train, args.n_val, args.seed)
        description = (f"synthetic (training.water.data.generate, seed {args.seed}, "
                       f"{args.n_train} train / {args.n_val} val)")
    print(f"parameters: {count_parameters(WaterMAE(cfg)):,}", flush=True)
    result = train(cfg, train_data, val_data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, time_limit=args.time_limit, eval_every=args.eval_every, out_dir=args.out,
                   data_description=description, device=args.device, workers=args.workers)
    print(f"best validation loss {result.best_val:.4f} after {result.steps} steps in {result.seconds:.1f}s; "
          f"checkpoint {args.out / 'best.pt'}")


if __name__ == "__main__":
    main()
