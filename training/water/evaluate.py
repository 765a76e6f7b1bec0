"""Evaluate gap filling on held-out samples: the model vs simple baselines, per modality.

    python -m training.water.evaluate --checkpoint runs/water/best.pt --n 256 --out runs/water/eval.json

Errors are mean squared errors at the hidden values in normalised units (physical error / modality std),
so modalities are comparable; RMSE in physical units is reported as well. Scenarios: see masking.py.
Methods: `model` (with `prior_fill`, the gap-filling prior plus the learned residual), `gap_prior` (that
prior alone, exactly as the model receives it: the baseline the residual has to beat) and BASELINES.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.water.preprocessing import (
    IMAGE_MODALITIES,
    MODALITIES,
    NormStats,
    expand_patch_mask,
    fill_hidden,
    patch_mask,
)
from training.water import data as water_data
from training.water.baselines import BASELINES, fill
from training.water.config import WaterModelConfig
from training.water.masking import SCENARIOS, scenario_masks
from training.water.model import DenseReconstructor, WaterMAE
from training.water.train import load_checkpoint


@torch.no_grad()
def reconstruct(model: WaterMAE, stats: NormStats, fields: dict[str, np.ndarray], static: np.ndarray,
                token_masks: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Physical-unit reconstruction of the hidden tokens (token masks [N, ...token grid]) with the model."""
    cfg = model.cfg
    dense = DenseReconstructor(model).eval()
    n = static.shape[0]
    outs: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    hp, wp = cfg.grid_patches
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        b = sl.stop - sl.start
        masks = [token_masks[m][sl].reshape(b, cfg.frames, hp, wp) if m in IMAGE_MODALITIES else token_masks[m][sl]
                 for m in MODALITIES]
        inputs = []
        for m, mask in zip(MODALITIES, masks, strict=True):
            normed = np.nan_to_num(stats.normalise(m, fields[m][sl]))
            if cfg.prior_fill:  # hidden values carry the gap-filling prior, as the service sends them
                normed = fill_hidden(normed, mask, m in IMAGE_MODALITIES, cfg.patch)
            inputs.append(torch.from_numpy(normed))
        masks = [torch.from_numpy(mask) for mask in masks]
        result = dense(*inputs, torch.from_numpy(stats.normalise_static(static[sl])), *masks)
        for m, r in zip(MODALITIES, result, strict=True):
            outs[m].append(stats.denormalise(m, r.numpy()))
    return {m: np.concatenate(v) for m, v in outs.items()}


def prior_only(cfg: WaterModelConfig, stats: NormStats, fields: dict[str, np.ndarray],
               token_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Physical-unit fill by `gap_prior` alone, computed as the model's input is (normalised, NaN -> mean)."""
    hp, wp = cfg.grid_patches
    out = {}
    for m in MODALITIES:
        image = m in IMAGE_MODALITIES
        mask = token_masks[m].reshape(-1, cfg.frames, hp, wp) if image else token_masks[m]
        normed = np.nan_to_num(stats.normalise(m, fields[m]))
        out[m] = stats.denormalise(m, fill_hidden(normed, mask, image, cfg.patch))
    return out


def value_masks(cfg_frames: int, patch: int, token_masks: dict[str, np.ndarray], grid: tuple[int, int]) -> dict:
    out = {}
    for m, mask in token_masks.items():
        if m in IMAGE_MODALITIES:
            out[m] = expand_patch_mask(mask.reshape(mask.shape[0], cfg_frames, *grid), patch)
        else:
            out[m] = mask
    return out


def evaluate(model: WaterMAE, stats: NormStats, climatology: dict[str, np.ndarray], data: water_data.WaterData,
             scenarios: tuple[str, ...] = SCENARIOS, seed: int = 7, batch_size: int = 64) -> dict[str, Any]:
    """{scenario: {method: {modality: mse, ..., "mean": mean over scored modalities}}} plus physical RMSE."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for scenario in scenarios:
        tok = scenario_masks(scenario, rng, len(data), cfg)
        # Missing data (NaN) is hidden from the model and the baselines, and never scored.
        nan_tok = {}
        for m in MODALITIES:
            nan = np.isnan(data.fields[m])
            if m in IMAGE_MODALITIES:
                nan_tok[m] = patch_mask(nan, cfg.patch).reshape(len(data), -1)
            else:
                nan_tok[m] = nan
        model_tok = {m: tok[m] | nan_tok[m] for m in MODALITIES}
        hidden = value_masks(cfg.frames, cfg.patch, model_tok, cfg.grid_patches)
        scored = {m: value_masks(cfg.frames, cfg.patch, tok, cfg.grid_patches)[m] & ~np.isnan(data.fields[m])
                  for m in MODALITIES}
        filled = {"model": reconstruct(model, stats, data.fields, data.static, model_tok, batch_size),
                  "gap_prior": prior_only(cfg, stats, data.fields, model_tok)}
        for method in BASELINES:
            filled[method] = {m: fill(method, m, np.nan_to_num(data.fields[m]), hidden[m] | np.isnan(data.fields[m]),
                                      climatology[m]) for m in MODALITIES}
        per_method: dict[str, Any] = {}
        for method, values in filled.items():
            scores, rmse = {}, {}
            for m in MODALITIES:
                if not scored[m].any():
                    continue
                err = (values[m] - data.fields[m])[scored[m]].astype(np.float64)
                scores[m] = float(np.mean((err / stats.std[m]) ** 2))
                rmse[m] = float(np.sqrt(np.mean(err**2)))
            scores["mean"] = float(np.mean(list(scores.values())))
            per_method[method] = {"mse": scores, "rmse_physical": rmse}
        results[scenario] = per_method
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = []
    for scenario, methods in results.items():
        mods = [m for m in MODALITIES if m in methods["model"]["mse"]] + ["mean"]
        lines.append(f"\n[{scenario}] normalised MSE at hidden values (lower is better)")
        lines.append(f"{'method':<12}" + "".join(f"{m:>11}" for m in mods))
        for method, entry in methods.items():
            lines.append(f"{method:<12}" + "".join(f"{entry['mse'][m]:>11.4f}" for m in mods))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="held-out sample folder or stacked NPZ (default: synthetic)")
    parser.add_argument("--n", type=int, default=256, help="synthetic held-out samples")
    parser.add_argument("--data-seed", type=int, default=999, help="synthetic seed (differs from training)")
    parser.add_argument("--mask-seed", type=int, default=7)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    model, stats, clim = checkpoint.model, checkpoint.extras["stats"], checkpoint.extras["climatology"]
    cfg = checkpoint.config
    if args.data is not None:
        data = water_data.load(args.data)
    else:
        data = water_data.generate(args.n, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=args.data_seed)
    results = evaluate(model, stats, clim, data, tuple(args.scenarios.split(",")), seed=args.mask_seed)
    print(format_table(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
