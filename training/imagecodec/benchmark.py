"""The codec report (issue 30 item 4): rate-distortion of our levels against Pillow's JPEG, WebP and AVIF on
held-out photographs, PSNR and MS-SSIM against bpp, Bjontegaard deltas with the range they cover, per-image
figures in JSON, plots in PNG, encode / decode times.

    python -m training.imagecodec.benchmark --corpus /work/corpus --out runs/ic/report \
        --model vr=runs/ic_vr/checkpoint.pt --model shipped=models/imagecodec/imagecodec-q2.pt

Sets: `crop` = every held-out photograph centre-cropped to 768x512 (Kodak's size); `own` = the `--own N`
smallest held-out photographs at their own size (the service's largest padded area, 2048x2048, bounds it).
Our bpp is the length of the actual stream (header and every substream) and our quality that of what the
decoder makes of those bytes, through the codec procedure (families/imagecodec/codec.py) with the eager
networks. A model is a variable-rate checkpoint (its trained levels, each with its per-channel steps) or a
one-lambda checkpoint at quantisation steps (`--levels`, default `STEP_LEVELS`, the served levels before issue 30).

Pillow: JPEG (4:2:0, default tables), WebP (`method=6`), AVIF (`speed=--avif-speed`; libavif through
Pillow) over quality sweeps. BD-rate (Bjontegaard): PCHIP (piecewise cubic) of log-rate over PSNR on each
curve's RD front (mean curves over the set's images), integrated over the PSNR range both curves cover,
which the JSON states next to every figure; negative = we need fewer bits. The same on MS-SSIM in dB
(-10 log10(1 - MS-SSIM)). Per-image BD-rates are in the JSON too.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, features

from families.imagecodec.codec import decode, encode, padded_size
from training.imagecodec.data import corpus_heldout, corpus_images
from training.imagecodec.evaluate import _mean_gap, psnr_at, rd_front
from training.imagecodec.metrics import ms_ssim, psnr
from training.imagecodec.model import ImageCodec
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import load_checkpoint

SWEEPS: dict[str, tuple[int, ...]] = {
    "JPEG": (5, 10, 20, 30, 50, 70, 85, 95),
    "WebP": (0, 10, 25, 40, 60, 75, 90),
    "AVIF": (10, 25, 40, 55, 70, 85),
}
OWN_MAX_PADDED = 2048 * 2048  # the service's default max_pixels


@dataclass
class OperatingPoint:
    """One of our levels: the model, the level's quantisation step (number or per channel), its lambda."""

    quality: int
    step: float | tuple[float, ...]
    lmbda: float | None
    model: ImageCodec
    name: str


def operating_points(checkpoint: Path, levels: dict[int, float] | None = None) -> list[OperatingPoint]:
    """The trained levels of a variable-rate checkpoint, or a one-lambda checkpoint at `levels`' steps."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model
    if model.cfg.levels:
        lambdas = loaded.extras.get("lambdas") or [None] * model.cfg.levels
        with torch.no_grad():
            return [OperatingPoint(k + 1, tuple(model.level_steps(k).double().tolist()), lambdas[k], model,
                                   f"imagecodec-q{k + 1}") for k in range(model.cfg.levels)]
    if levels is None:
        from training.imagecodec.default import STEP_LEVELS

        levels = dict(STEP_LEVELS)
    return [OperatingPoint(q, float(step), loaded.extras["lambda"], model, f"imagecodec-q{q}")
            for q, step in sorted(levels.items())]


def _measure(image: np.ndarray, rec: np.ndarray, nbytes: int) -> dict[str, float]:
    return {"bpp": 8 * nbytes / (image.shape[0] * image.shape[1]), "psnr": psnr(image, rec),
            "ms_ssim": ms_ssim(image, rec)}


def code_ours(point: OperatingPoint, image: np.ndarray) -> dict[str, Any]:
    """Encode and decode with the real procedure; the figures of the decoded bytes."""
    nets, cm = TorchNetworks(point.model), codec_model(point.model, point.name, step=point.step)
    data, enc = encode(image, nets, cm)
    rec, dec = decode(data, nets, cm)
    if not np.array_equal(enc.symbols, dec.symbols):
        raise AssertionError(f"{point.name}: decoded symbols differ from the encoded ones")
    return {"quality": point.quality, **_measure(image, rec, len(data)), "encode_s": enc.seconds,
            "decode_s": dec.seconds}


def code_pillow(image: np.ndarray, fmt: str, quality: int, avif_speed: int) -> dict[str, Any]:
    options: dict[str, Any] = {"quality": quality}
    if fmt == "WebP":
        options["method"] = 6
    if fmt == "AVIF":
        options["speed"] = avif_speed
    buffer = io.BytesIO()
    start = time.perf_counter()
    Image.fromarray(image).save(buffer, format=fmt.upper(), **options)
    encode_s = time.perf_counter() - start
    rec = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return {"quality": quality, **_measure(image, rec, len(buffer.getvalue())), "encode_s": encode_s}


def msssim_db(value: float) -> float:
    return float(-10 * np.log10(max(1.0 - value, 1e-10)))


def bd_rate(anchor: dict[str, list[float]], test: dict[str, list[float]], metric: str = "psnr") -> dict[str, Any]:
    """Bjontegaard delta rate (%) of `test` against `anchor` (curves: lists of bpp and the metric) on the
    range of the metric both RD fronts cover: {"percent", "range": [lo, hi], "metric"}; percent is None
    without an overlap of at least 0.1 dB."""
    def front(curve: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
        values = curve[metric] if metric == "psnr" else [msssim_db(v) for v in curve[metric]]
        return rd_front(curve["bpp"], values)

    ra, qa = front(anchor)
    rb, qb = front(test)
    result: dict[str, Any] = {"metric": "psnr_db" if metric == "psnr" else "ms_ssim_db", "percent": None,
                              "range": None}
    if len(ra) < 2 or len(rb) < 2:
        return result
    lo, hi = max(qa.min(), qb.min()), min(qa.max(), qb.max())
    gap = _mean_gap(qa, np.log(ra), qb, np.log(rb), min_overlap=0.1)
    if np.isfinite(gap):
        result.update(percent=round(float((np.exp(gap) - 1) * 100), 2), range=[round(lo, 3), round(hi, 3)])
    return result


def _mean_curve(rows_per_image: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """The set's curve: per setting, the mean over images of bpp, PSNR and MS-SSIM."""
    return {key: np.mean([[r[key] for r in rows] for rows in rows_per_image], axis=0).round(5).tolist()
            for key in ("bpp", "psnr", "ms_ssim")}


def _matched_gaps(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[float | None]:
    """Per level of ours: PSNR minus the other codec's PSNR at exactly our bpp (None outside its range)."""
    gaps: list[float | None] = []
    for row in ours:
        at = psnr_at(theirs, row["bpp"])
        gaps.append(round(row["psnr"] - at, 3) if np.isfinite(at) else None)
    return gaps


def evaluate_set(images: dict[str, np.ndarray], models: dict[str, list[OperatingPoint]], codecs: list[str],
                 avif_speed: int, log=functools.partial(print, flush=True),
                 cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every image through every Pillow setting and every level of every model. `cache`: Pillow rows kept
    by (image, size, codec, quality, speed) across runs - they depend on nothing else."""
    cache = {} if cache is None else cache
    per_image: dict[str, dict[str, Any]] = {}
    for name, image in images.items():
        entry: dict[str, Any] = {"size": [int(image.shape[1]), int(image.shape[0])]}
        for fmt in codecs:
            rows = []
            for q in SWEEPS[fmt]:
                key = f"{name}|{image.shape[1]}x{image.shape[0]}|{fmt}|{q}|{avif_speed if fmt == 'AVIF' else ''}"
                if key not in cache:
                    cache[key] = code_pillow(image, fmt, q, avif_speed)
                rows.append(cache[key])
            entry[fmt] = rows
        for label, points in models.items():
            entry[label] = [code_ours(p, image) for p in points]
        for label in models:
            entry[f"{label}_bd_rate"] = {fmt: bd_rate(_as_curve(entry[fmt]), _as_curve(entry[label])) for fmt in codecs}
            entry[f"{label}_psnr_gap_at_bpp"] = {fmt: _matched_gaps(entry[label], entry[fmt]) for fmt in codecs}
        per_image[name] = entry
        if log:
            log(f"  {name} {image.shape[1]}x{image.shape[0]}: " + ", ".join(
                f"{label} " + " ".join(f"{r['bpp']:.3f}/{r['psnr']:.2f}" for r in entry[label]) for label in models))
    curves = {key: _mean_curve([per_image[n][key] for n in images]) for key in [*codecs, *models]}
    summary: dict[str, Any] = {"images": sorted(images), "curves": curves, "per_image": per_image, "models": {}}
    for label, points in models.items():
        levels = []
        for k, point in enumerate(points):
            rows = [per_image[n][label][k] for n in images]
            gaps = {fmt: [g for n in images if (g := per_image[n][f"{label}_psnr_gap_at_bpp"][fmt][k]) is not None]
                    for fmt in codecs}
            levels.append({
                "quality": point.quality, "lambda": point.lmbda,
                "step": point.step if isinstance(point.step, float) else
                {"mean": round(float(np.mean(point.step)), 4), "min": round(float(np.min(point.step)), 4),
                 "max": round(float(np.max(point.step)), 4)},
                "bpp": round(float(np.mean([r["bpp"] for r in rows])), 4),
                "psnr": round(float(np.mean([r["psnr"] for r in rows])), 3),
                "ms_ssim": round(float(np.mean([r["ms_ssim"] for r in rows])), 5),
                "encode_s_median": round(float(np.median([r["encode_s"] for r in rows])), 3),
                "decode_s_median": round(float(np.median([r["decode_s"] for r in rows])), 3),
                "psnr_gap_at_bpp": {fmt: {"mean_db": round(float(np.mean(g)), 3) if g else None, "images": len(g)}
                                    for fmt, g in gaps.items()},
            })
        bd = {fmt: {"psnr": bd_rate(curves[fmt], curves[label]), "ms_ssim": bd_rate(curves[fmt], curves[label],
                                                                                     "ms_ssim")}
              for fmt in [*codecs, *(m for m in models if m != label)]}
        summary["models"][label] = {"levels": levels, "bd_rate": bd}
    return summary


def _as_curve(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {key: [r[key] for r in rows] for key in ("bpp", "psnr", "ms_ssim")}


def plot_set(summary: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, curve in summary["curves"].items():
        ours = key in summary["models"]
        style = {"marker": "^" if ours else "o", "linewidth": 2.2 if ours else 1.2, "markersize": 5}
        label = f"{key} (actual bitstream)" if ours else f"{key} (Pillow)"
        axes[0].plot(curve["bpp"], curve["psnr"], label=label, **style)
        axes[1].plot(curve["bpp"], [msssim_db(v) for v in curve["ms_ssim"]], label=label, **style)
    for ax, ylabel in zip(axes, ("PSNR-RGB (dB)", "MS-SSIM (dB, -10 log10(1 - MS-SSIM))"), strict=True):
        ax.set_xlabel("bpp")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1.3)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_heldout(checkpoint: Path, measured: dict[str, Any], images: int) -> None:
    """Store a model's measured held-out figures per level in its checkpoint (`heldout`), weights untouched."""
    from training.checkpoints import save_checkpoint
    from training.imagecodec.train import FAMILY, read_payload

    payload = read_payload(checkpoint)
    payload["heldout"] = {str(lv["quality"]): {"bpp": lv["bpp"], "psnr": lv["psnr"], "ms_ssim": lv["ms_ssim"],
                                               "images": images, "size": "768x512 centre crops",
                                               "set": "corpus held-out split (training/imagecodec/corpus.json)"}
                          for lv in measured["levels"]}
    save_checkpoint(FAMILY, payload, checkpoint)


def own_size_images(corpus: Path, count: int) -> dict[str, np.ndarray]:
    """The `count` held-out photographs of smallest area that the service codes at their own size."""
    photos = corpus_images(corpus, "heldout")
    fitting = [(img.shape[0] * img.shape[1], name) for name, img in photos.items()
               if np.prod(padded_size(*img.shape[:2])) <= OWN_MAX_PADDED]
    return {name: photos[name] for _, name in sorted(fitting)[:count]}


def print_table(label: str, set_name: str, result: dict[str, Any], codecs: list[str]) -> None:
    model = result["models"][label]
    print(f"\n[{set_name}] {label}: level, lambda, bpp, PSNR, MS-SSIM, enc/dec s (median), "
          + ", ".join(f"dB vs {c} at bpp (n)" for c in codecs))
    for lv in model["levels"]:
        gaps = " ".join(f"{g['mean_db']:+.2f} ({g['images']})" if g["mean_db"] is not None else "- (0)"
                        for g in lv["psnr_gap_at_bpp"].values())
        lam = f"{lv['lambda']:.4f}" if lv["lambda"] else "-"
        print(f"  q{lv['quality']} {lam} {lv['bpp']:.4f} {lv['psnr']:.2f} {lv['ms_ssim']:.4f} "
              f"{lv['encode_s_median']:.2f}/{lv['decode_s_median']:.2f}  {gaps}")
    for other, bd in model["bd_rate"].items():
        for metric, figure in bd.items():
            if figure["percent"] is None:
                print(f"  BD-rate vs {other} ({metric}): no overlap")
            else:
                lo, hi = figure["range"]
                print(f"  BD-rate vs {other} ({metric}): {figure['percent']:+.1f} % over {lo:.2f}-{hi:.2f} dB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a built corpus (its held-out photographs)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=CHECKPOINT",
                        help="a model to report (repeat); one-lambda checkpoints are coded at --levels")
    parser.add_argument("--levels", default=None, help="q:step,... for one-lambda checkpoints (default: served)")
    parser.add_argument("--sets", nargs="+", default=["crop"], choices=["crop", "own"])
    parser.add_argument("--own", type=int, default=1, help="how many photographs at their own size")
    parser.add_argument("--limit", type=int, default=None, help="only the first N crops (a quick look)")
    parser.add_argument("--avif-speed", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", default=None, metavar="LABEL",
                        help="write the crop set's per-level bpp / PSNR / MS-SSIM into that model's checkpoint "
                             "(the export copies them into each level's manifest)")
    parser.add_argument("--pillow-cache", type=Path, default=None,
                        help="JSON file of Pillow results reused across runs (written back)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    levels = ({int(q): float(s) for q, s in (item.split(":") for item in args.levels.split(","))}
              if args.levels else None)
    models = {}
    for item in args.model:
        label, _, path = item.partition("=")
        models[label] = operating_points(Path(path), levels)
    codecs = ["JPEG", "WebP"] + (["AVIF"] if features.check("avif") else [])
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"models": {label: item.partition("=")[2] for label, item in zip(models, args.model,
                                                                                            strict=True)},
                              "codecs": codecs, "avif": bool(features.check("avif")), "avif_speed": args.avif_speed,
                              "sweeps": {c: SWEEPS[c] for c in codecs}, "threads": args.threads, "sets": {}}
    for set_name in args.sets:
        if set_name == "crop":
            images = corpus_heldout(args.corpus)
            if args.limit:
                images = dict(list(images.items())[: args.limit])
        else:
            images = own_size_images(args.corpus, args.own)
        print(f"[{set_name}] {len(images)} photographs")
        cache = json.loads(args.pillow_cache.read_text()) if args.pillow_cache and args.pillow_cache.exists() else {}
        result = evaluate_set(images, models, codecs, args.avif_speed, cache=cache)
        if args.pillow_cache:
            args.pillow_cache.write_text(json.dumps(cache))
        report["sets"][set_name] = result
        title = ("held-out photographs, centre crops 768x512" if set_name == "crop"
                 else "held-out photographs at their own size")
        plot_set(result, f"{title} ({len(images)})", args.out / f"rd_{set_name}.png")
        for label in models:
            print_table(label, set_name, result, codecs)
    (args.out / "rd_report.json").write_text(json.dumps(report, indent=1))
    if args.record:
        record_heldout(Path(report["models"][args.record]), report["sets"]["crop"]["models"][args.record],
                       len(report["sets"]["crop"]["images"]))
    print(f"wrote {args.out / 'rd_report.json'} and rd_<set>.png")


if __name__ == "__main__":
    main()
