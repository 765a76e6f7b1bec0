"""Train the codec with the rate-distortion loss: python -m training.imagecodec.train --quality 3 --out runs/ic

One run = one quality level (one lambda) = one exported model version. Random crops/flips from the
scikit-image photographs by default, or from --images DIR.

Long runs in the background (hours on a CPU): `--seconds` is the training time over every resumed run,
`<out>/train_state.pt` is written every `--save-every` seconds and on SIGTERM / SIGINT (then the run stops
after its current step), and `--resume` continues it exactly (weights, optimiser, schedule, step, clock,
RNGs). With `--eval-every N` the model is validated every N steps with the real coder on held-out
photographs - bpp from the actual bitstream bytes, PSNR of what those bytes decode to - and
`checkpoint.pt` is the step with the lowest rate-distortion cost (bpp + lambda * 255^2 * MSE) so measured.

    nohup python -m training.imagecodec.train --quality 2 --out runs/ic/q2 --seconds 36000 --eval-every 500 \
        --resume > runs/ic/q2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.imagecodec.codec import decode, encode
from training.checkpoints import FAMILY_KEY, Checkpoint, TrainResult, read_checkpoint, save_atomic, save_checkpoint
from training.imagecodec.config import LAMBDAS, SIZES, CodecConfig, ImageCodecConfig, load_config
from training.imagecodec.data import RandomCrops, corpus_heldout, folder_images, heldout_photos, skimage_photos
from training.imagecodec.model import ImageCodec, count_parameters, rd_loss
from training.imagecodec.networks import TorchNetworks, codec_model
from training.loop import stop_on_signals

FAMILY = "imagecodec"
CHECKPOINT = "checkpoint.pt"
STATE = "train_state.pt"  # everything `--resume` needs
VALIDATION_CROP = (256, 384)  # centre crops of the held-out photographs validated with the real coder
HISTORY_KEPT = 5  # log rows the checkpoint's provenance keeps
Log = Callable[[str], None] | None
Schedule = torch.optim.lr_scheduler.LRScheduler


# ---- checkpoints ----------------------------------------------------------------------------------------

def _is_legacy(payload: dict[str, Any]) -> bool:
    """A codec checkpoint from before the family tag: weights and a codec config (widths, M, N)."""
    config = payload.get("config")
    return "state_dict" in payload and isinstance(config, dict) and {"widths", "M", "N"} <= config.keys()


def read_payload(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict (refused unless it is a codec's); untagged files are recognised by their keys."""
    return read_checkpoint(Path(path), FAMILY, legacy=_is_legacy)


def model_of(payload: dict[str, Any]) -> ImageCodec:
    """The checkpoint's model in eval mode on the CPU (float16 stored weights come back as float32)."""
    model = ImageCodec(CodecConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    """The eval-mode model, its `CodecConfig`, and in `extras` the rest of the file: `quality` and `lambda`
    (None when the file has none) and `provenance` (training settings, data, history)."""
    payload = read_payload(path)
    extras = {k: v for k, v in payload.items() if k not in ("config", "state_dict", FAMILY_KEY)}
    extras.setdefault("quality", None)
    extras.setdefault("lambda", None)
    return Checkpoint(family=FAMILY, path=Path(path), model=model_of(payload),
                      config=CodecConfig.from_dict(payload["config"]), extras=extras)


def level_of_step(step: int, levels: int, seed: int) -> int:
    """The trained level (0-based) of optimiser step `step` (1-based) of a variable-rate run: each round of
    `levels` steps visits every level once, in an order drawn from (seed, round) - balanced, and a function
    of the step alone, so a resumed run trains the same levels without another RNG in its state."""
    rnd, pos = divmod(step - 1, levels)
    return int(np.random.default_rng([seed, rnd]).permutation(levels)[pos])


def checkpoint_payload(model: ImageCodec, config: ImageCodecConfig, *, steps: int, seconds: float,
                       data_description: str, history: list[dict[str, Any]],
                       earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's content (`save_checkpoint` adds the family tag)."""
    return {
        "config": model.cfg.to_dict(), "state_dict": model.state_dict(),
        "quality": None if config.lambdas else config.quality,
        "lambda": None if config.lambdas else config.lambda_,
        **({"lambdas": list(config.lambdas)} if config.lambdas else {}),
        "provenance": {
            "training": {"steps": steps, "seconds": round(seconds, 1), "batch": config.batch, "crop": config.crop,
                         "lr": config.lr, "seed": config.seed, "device": config.device, "lambda": config.lambda_,
                         "quality": config.quality, "phase": model.cfg.phase, "size": config.size,
                         "continued_from": earlier},
            "data": data_description,
            "parameters": count_parameters(model),
            "history": history[-HISTORY_KEPT:],
        },
    }


# ---- progress, resumable state, validation with the real bitstream --------------------------------------

@dataclass
class Progress:
    """Where a run stands; `train_state.pt` holds it with the weights, optimiser and RNGs."""

    step: int = 0
    seconds: float = 0.0  # training time over every resumed run
    history: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    best_cost: float = math.inf  # validation rate-distortion cost of checkpoint.pt (real bitstream)
    best_step: int = 0


def _run_identity(config: ImageCodecConfig) -> dict[str, Any]:
    """What a resumed run must share with the state it continues."""
    identity = {"model": config.model.to_dict(), "quality": config.quality, "lambda": config.lambda_,
                "batch": config.batch, "crop": config.crop, "lr": config.lr, "seed": config.seed}
    if config.lambdas:  # only variable-rate states carry these (older states compare equal as before)
        identity.update(lambdas=list(config.lambdas), step_lr=config.step_lr)
    return identity


def _save_state(path: Path, model: ImageCodec, optimiser: torch.optim.Optimizer, schedule: Schedule,
                crops: RandomCrops, config: ImageCodecConfig, progress: Progress) -> None:
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    save_atomic({FAMILY_KEY: FAMILY, "run": _run_identity(config), "progress": asdict(progress),
                 "state_dict": model.state_dict(), "optimiser": optimiser.state_dict(),
                 "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
                 "numpy_rng": np.random.get_state(), "crops_rng": crops.rng.bit_generator.state}, path)


def _resume(path: Path, model: ImageCodec, optimiser: torch.optim.Optimizer, schedule: Schedule,
            crops: RandomCrops, config: ImageCodecConfig) -> Progress:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get(FAMILY_KEY) != FAMILY or "progress" not in state:
        raise ValueError(f"{path} is not an imagecodec training state")
    if state["run"] != _run_identity(config):
        differs = sorted(k for k in state["run"] if state["run"][k] != _run_identity(config).get(k))
        raise ValueError(f"{path} is the state of another run (differs in {', '.join(differs)}); "
                         "resume with the same flags or use another --out")
    model.load_state_dict(state["state_dict"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(state["numpy_rng"])
    crops.rng.bit_generator.state = state["crops_rng"]
    return Progress(**state["progress"])


def validation_images(corpus: str | Path | None = None) -> dict[str, np.ndarray]:
    """Centre crops of photographs from another source than the training set (see `heldout_photos`), or of
    the held-out photographs of a built corpus (at 768x512 first, as the evaluation sees them)."""
    h, w = VALIDATION_CROP
    crops = {}
    photos = corpus_heldout(Path(corpus)) if corpus else heldout_photos()
    for name, img in photos.items():
        ch, cw = min(h, img.shape[0]), min(w, img.shape[1])
        top, left = (img.shape[0] - ch) // 2, (img.shape[1] - cw) // 2
        crops[name] = np.ascontiguousarray(img[top:top + ch, left:left + cw])
    return crops


def validate_levels(model: ImageCodec, images: dict[str, np.ndarray], lambdas: tuple[float, ...]) -> dict[str, Any]:
    """Every trained level of a variable-rate model with the real coder; `cost` is the sum of the levels'."""
    rows = [{"level": k + 1, **validate(model, images, lmbda, level=k)} for k, lmbda in enumerate(lambdas)]
    return {"cost": round(sum(r["cost"] for r in rows), 6), "levels": rows}


def validate(model: ImageCodec, images: dict[str, np.ndarray], lmbda: float,
             level: int | None = None) -> dict[str, float]:
    """Rate-distortion with the real coder: bpp of the actual stream bytes, MSE of what they decode to
    (`level`: a trained level of a variable-rate model, coded with its per-channel steps)."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    step: float | tuple[float, ...] = 1.0
    if level is not None:
        step = tuple(cpu_model.level_steps(level).detach().double().tolist())
    nets, cm = TorchNetworks(cpu_model), codec_model(cpu_model, "validation", step=step)
    bits = pixels = 0
    squared = 0.0
    for image in images.values():
        data, _ = encode(image, nets, cm)
        rec, _ = decode(data, nets, cm)
        bits += 8 * len(data)
        pixels += image.shape[0] * image.shape[1]
        squared += float(np.sum((image.astype(np.float64) / 255 - rec.astype(np.float64) / 255) ** 2)) / 3
    bpp, mse = bits / pixels, squared / pixels
    return {"bpp": round(bpp, 5), "psnr": round(float(-10 * np.log10(max(mse, 1e-10))), 3),
            "cost": round(lmbda * 255.0**2 * mse + bpp, 6)}


# ---- training -------------------------------------------------------------------------------------------

def make_optimiser(model: ImageCodec, config: ImageCodecConfig) -> tuple[torch.optim.Optimizer, Schedule]:
    """Adam; the learning rate drops by 0.3 at 80 % and again at 95 % of the steps (or of the time budget)."""
    steps_params = [p for name, p in model.named_parameters() if name == "log_steps"]
    others = [p for name, p in model.named_parameters() if name != "log_steps"]
    groups: list[dict[str, Any]] = [{"params": others, "lr": config.lr}]
    if steps_params:  # its own rate: the steps must travel far in few visits per level
        groups.append({"params": steps_params, "lr": config.step_lr})
    optimiser = torch.optim.Adam(groups, lr=config.lr)
    steps = config.steps
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(steps * 0.8), int(steps * 0.95)], 0.3)
    return optimiser, schedule


def training_step(model: ImageCodec, optimiser: torch.optim.Optimizer, x: torch.Tensor,
                  lmbda: float, level: int | None = None) -> dict[str, float]:
    """One optimiser step of the rate-distortion loss on the batch `x` (at trained level `level` of a
    variable-rate model, 0-based, with that level's lambda); returns loss, bpp and mse."""
    model.train()
    losses = rd_loss(model(x) if level is None else model(x, level), x, lmbda)
    optimiser.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def schedule_step(optimiser: torch.optim.Optimizer, schedule: Schedule, config: ImageCodecConfig,
                  elapsed: float) -> None:
    """Advance the learning-rate schedule: by steps, or for a time-budgeted run by the share of the budget."""
    if config.seconds is None:
        schedule.step()
        return
    frac = elapsed / config.seconds
    bases = [config.lr, config.step_lr]  # the weights' group, then the levels' steps when there are levels
    for group, base in zip(optimiser.param_groups, bases, strict=False):
        group["lr"] = base * (0.3 if frac > 0.8 else 1.0) * (0.3 if frac > 0.95 else 1.0)


def log_row(step: int, elapsed: float, losses: dict[str, float]) -> dict[str, Any]:
    """One history entry: the step's losses and the PSNR its mse means."""
    row: dict[str, Any] = {"step": step, "seconds": round(elapsed, 1), **{k: round(v, 5) for k, v in losses.items()}}
    row["psnr"] = round(float(-10 * np.log10(max(row["mse"], 1e-10))), 2)
    return row


def _continued(model: ImageCodec, init: str | None, lambdas: tuple[float, ...] = ()) -> dict[str, Any] | None:
    """Load the weights of the run to continue (same config); its training provenance (the chain of rounds).
    A variable-rate model started from a one-lambda checkpoint gets its levels' steps from
    `initial_log_steps` (the checkpoint's own trade-off at step 1, so it starts from today's curve)."""
    if init is None:
        return None
    start_from = read_payload(Path(init))
    state = dict(start_from["state_dict"])
    if lambdas and "log_steps" not in state:
        reference = start_from.get("lambda") or LAMBDAS[start_from.get("quality") or 2]
        state["log_steps"] = initial_log_steps(lambdas, reference, model.cfg.M)
    model.load_state_dict(state)
    return start_from.get("provenance", {}).get("training")


def initial_log_steps(lambdas: tuple[float, ...], reference: float, channels: int) -> torch.Tensor:
    """log Delta per level for a model trained at one lambda `reference` with step 1: Delta = sqrt(reference /
    lambda) (at high rate MSE ~ Delta^2 / 12, so the best step goes as lambda^-1/2), the same for every channel."""
    steps = torch.tensor([math.sqrt(reference / lmbda) for lmbda in lambdas], dtype=torch.float32)
    return torch.log(steps)[:, None].expand(len(lambdas), channels).clone()


def train(config: ImageCodecConfig, out_dir: Path, data: Path | None = None, *, log: Log = print,
          validation: dict[str, np.ndarray] | None = None) -> TrainResult:
    """Train one quality level on random crops of the images in the folder `data` (None: the photographs
    bundled with scikit-image) and write `out_dir/checkpoint.pt` (with `eval_every`: the best validated step
    on `validation`, default `validation_images()`)."""
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    photos = folder_images(Path(data)) if data else skimage_photos()
    crops = RandomCrops(list(photos.values()), config.crop, seed=config.seed, scales=config.scales)
    model = ImageCodec(config.model)
    earlier = _continued(model, config.init, config.lambdas)
    model = model.to(config.device)
    optimiser, schedule = make_optimiser(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    progress = Progress()
    if config.resume and state_path.exists():
        progress = _resume(state_path, model, optimiser, schedule, crops, config)
        if log:
            log(json.dumps({"resumed": str(state_path), "step": progress.step, "seconds": round(progress.seconds, 1)}))
    if config.eval_every and validation is None:
        validation = validation_images(config.val_corpus)
    description = str(data) if data else "scikit-image bundled photographs: " + ", ".join(sorted(photos))

    def write_checkpoint() -> Path:
        payload = checkpoint_payload(model, config, steps=progress.step, seconds=progress.seconds,
                                     data_description=description, history=progress.history, earlier=earlier)
        payload["state_dict"] = {k: v.detach().cpu() for k, v in payload["state_dict"].items()}
        payload["provenance"]["validation"] = progress.validations[-HISTORY_KEPT:]
        return save_checkpoint(FAMILY, payload, out_dir / CHECKPOINT)

    def validate_now() -> None:
        measured = (validate_levels(model, validation, config.lambdas) if config.lambdas
                    else validate(model, validation, config.lambda_))
        result = {"step": progress.step, **measured}
        progress.validations.append(result)
        if log:
            log(json.dumps({"validation": result}))
        if result["cost"] < progress.best_cost:
            progress.best_cost, progress.best_step = result["cost"], progress.step
            write_checkpoint()

    run_start, run_base, last_save = time.perf_counter(), progress.seconds, time.monotonic()
    with stop_on_signals() as stop:
        while (progress.step < config.steps and (config.seconds is None or progress.seconds < config.seconds)
               and not stop.is_set()):
            batch = crops.batch(config.batch).to(config.device)
            if config.lambdas:
                level = level_of_step(progress.step + 1, len(config.lambdas), config.seed)
                losses = training_step(model, optimiser, batch, config.lambdas[level], level)
                losses["level"] = level + 1
            else:
                losses = training_step(model, optimiser, batch, config.lambda_)
            progress.step += 1
            progress.seconds = run_base + time.perf_counter() - run_start
            schedule_step(optimiser, schedule, config, progress.seconds)
            if progress.step % config.log_every == 0 or progress.step == 1:
                progress.history.append(log_row(progress.step, progress.seconds, losses))
                if log:
                    log(json.dumps(progress.history[-1]))
            if config.eval_every and progress.step % config.eval_every == 0:
                validate_now()
            if time.monotonic() - last_save >= config.save_every_s:
                _save_state(state_path, model, optimiser, schedule, crops, config, progress)
                last_save = time.monotonic()
    finished = not stop.is_set()
    if config.eval_every and (not progress.validations or progress.validations[-1]["step"] != progress.step):
        validate_now()
    _save_state(state_path, model, optimiser, schedule, crops, config, progress)
    checkpoint = out_dir / CHECKPOINT if config.eval_every and progress.best_step else write_checkpoint()
    summary = {"steps": progress.step, "seconds": round(progress.seconds, 1), "quality": config.quality,
               "lambda": config.lambda_, **({"lambdas": list(config.lambdas)} if config.lambdas else {}),
               "parameters": count_parameters(model), "finished": finished,
               "last": progress.history[-1] if progress.history else None,
               "best_validation": next((v for v in progress.validations if v["step"] == progress.best_step), None)}
    model.cpu().eval()
    return TrainResult(best_checkpoint=checkpoint, out_dir=out_dir, summary=summary)


def checkpoint_from_state(state_path: Path, target: Path, data_description: str = "") -> Path:
    """A checkpoint of the latest weights of a running (or stopped) run, from its `train_state.pt`, without
    touching the run: the way to evaluate and ship a snapshot while training goes on."""
    state = torch.load(Path(state_path), map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get(FAMILY_KEY) != FAMILY or "progress" not in state:
        raise ValueError(f"{state_path} is not an imagecodec training state")
    run, progress = state["run"], state["progress"]
    lambdas = run.get("lambdas")
    payload = {
        "config": run["model"], "state_dict": state["state_dict"],
        "quality": None if lambdas else run["quality"], "lambda": None if lambdas else run["lambda"],
        **({"lambdas": lambdas} if lambdas else {}),
        "provenance": {
            "training": {"steps": progress["step"], "seconds": round(progress["seconds"], 1), "batch": run["batch"],
                         "crop": run["crop"], "lr": run["lr"], "seed": run["seed"],
                         **({"lambdas": lambdas, "step_lr": run.get("step_lr")} if lambdas else
                            {"lambda": run["lambda"], "quality": run["quality"]}),
                         "snapshot_of": str(state_path)},
            "data": data_description, "history": progress["history"][-HISTORY_KEPT:],
            "validation": progress["validations"][-HISTORY_KEPT:],
        },
    }
    return save_checkpoint(FAMILY, payload, Path(target))


# ---- CLI ------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quality", type=int, default=3, choices=sorted(LAMBDAS))
    parser.add_argument("--lmbda", type=float, default=None, help="override the quality level's lambda")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--phase", default="phase2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this wall time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="crop from the images downscaled by these factors too (e.g. 1 0.5 0.25)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, default=None, help="folder of training images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    parser.add_argument("--resume", action="store_true", help=f"continue <out>/{STATE} when it exists")
    parser.add_argument("--save-every", type=float, default=300.0, help="seconds between resumable states")
    parser.add_argument("--log-every", type=int, default=50, help="steps between training log rows")
    parser.add_argument("--lambdas", type=float, nargs="+", default=None,
                        help="variable rate: one model trained at these lambdas, one level each (q1 = the first)")
    parser.add_argument("--step-lr", type=float, default=3e-3, help="learning rate of the levels' steps")
    parser.add_argument("--val-corpus", type=Path, default=None,
                        help="validate on this built corpus's held-out photographs (default: scikit-image's)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="steps between validations with the real bitstream (checkpoint.pt = the best)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ImageCodecConfig:
    """The --size preset with the phase and the training flags given."""
    config = load_config(args.size)
    lambdas = tuple(args.lambdas or ())
    return replace(config, model=replace(config.model, phase=args.phase, levels=len(lambdas)), lambdas=lambdas,
                   step_lr=args.step_lr, val_corpus=str(args.val_corpus) if args.val_corpus else None,
                   quality=args.quality, lmbda=args.lmbda,
                   steps=args.steps, seconds=args.seconds, batch=args.batch, crop=args.crop,
                   scales=tuple(args.scales), lr=args.lr,
                   seed=args.seed, device=args.device, init=str(args.init) if args.init else None,
                   resume=args.resume, save_every_s=args.save_every, eval_every=args.eval_every,
                   log_every=args.log_every)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(config_from_args(args), args.out, args.images, log=lambda line: print(line, flush=True))
    print(json.dumps(result.summary))
    print(f"checkpoint: {result.best_checkpoint}")


if __name__ == "__main__":
    main()
