"""Rate-distortion evaluation on held-out photos with the real bitstream (actual bytes), against JPEG and
WebP from Pillow at matched bpp; BD-rate / BD-PSNR vs JPEG; JSON + PNG plot.

    python -m training.imagecodec.evaluate --checkpoints runs/ic/q*/checkpoint.pt --out runs/ic/eval
    python -m training.imagecodec.evaluate --checkpoints models/imagecodec/imagecodec-q2.pt --levels default \
        --corpus /work/corpus --out runs/ic/levels   (the served levels: one checkpoint at each level's
        quantisation step, on the corpus's held-out photographs at 768x512)

JPEG and WebP are compared at matched bpp: their PSNR interpolated (monotone, in log bpp) at our rate on
each image, so a level's gap is not the gap to the nearest Pillow quality setting.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from families.imagecodec.codec import decode, encode
from training.imagecodec.data import corpus_heldout, folder_images, heldout_photos
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import load_checkpoint


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003; 5 scales, Gaussian window 11 / sigma 1.5) on RGB averaged over channels."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum())
    win = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for level in range(5):
        if min(x.shape[-2:]) < 11:
            break
        mu_x, mu_y = F.conv2d(x, win, groups=3), F.conv2d(y, win, groups=3)
        sxx = F.conv2d(x * x, win, groups=3) - mu_x**2
        syy = F.conv2d(y * y, win, groups=3) - mu_y**2
        sxy = F.conv2d(x * y, win, groups=3) - mu_x * mu_y
        cs = ((2 * sxy + c2) / (sxx + syy + c2)).mean()
        ssim = (((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * (2 * sxy + c2) / (sxx + syy + c2)).mean()
        values.append(ssim if level == 4 else cs)
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    vals = torch.stack(values).clamp(min=1e-6)
    w = weights[: len(values)] / weights[: len(values)].sum()
    return float(torch.prod(vals**w))


def pillow_codec(image: np.ndarray, fmt: str, quality: int) -> tuple[float, np.ndarray]:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=quality)
    data = buffer.getvalue()
    rec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return 8 * len(data) / (image.shape[0] * image.shape[1]), rec


def pillow_curve(image: np.ndarray, fmt: str) -> list[dict]:
    rows = []
    for q in (1, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90):
        bpp, rec = pillow_codec(image, fmt, q)
        rows.append({"quality": q, "bpp": bpp, "psnr": psnr(image, rec)})
    return rows


def matched(curve: list[dict], bpp: float) -> dict:
    """Pillow point whose bpp is closest to `bpp`."""
    return min(curve, key=lambda r: abs(np.log(r["bpp"]) - np.log(bpp)))


def psnr_at(curve: list[dict], bpp: float) -> float:
    """PSNR of a Pillow curve at exactly `bpp` (PCHIP in log bpp over its RD front); NaN outside its range."""
    from scipy.interpolate import PchipInterpolator

    rate, quality = rd_front([r["bpp"] for r in curve], [r["psnr"] for r in curve])
    if len(rate) < 2 or not rate.min() <= bpp <= rate.max():
        return float("nan")
    return float(PchipInterpolator(np.log(rate), quality)(np.log(bpp)))


def below_range_verdict(curve: list[dict], bpp: float, quality: float) -> str | None:
    """Where `bpp` is below the Pillow curve's cheapest point (no matched PSNR exists): 'dominates' when our
    PSNR also beats that cheapest point (fewer bits and better), else 'below'; None inside or above its range."""
    cheapest = min(curve, key=lambda r: r["bpp"])
    if bpp >= cheapest["bpp"]:
        return None
    return "dominates" if quality > cheapest["psnr"] else "below"


def rd_front(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    """The points of an RD curve that improve on every cheaper point (sorted by rate): Bjontegaard
    integration needs quality increasing with rate, and a point that spends more bits for no gain is
    dominated anyway."""
    order = np.argsort(rate)
    keep_rate, keep_quality = [], []
    for r, q in zip(np.asarray(rate, float)[order], np.asarray(quality, float)[order], strict=True):
        if not keep_quality or q > keep_quality[-1]:
            keep_rate.append(r)
            keep_quality.append(q)
    return np.array(keep_rate), np.array(keep_quality)


def _mean_gap(xa, ya, xb, yb, min_overlap: float) -> float:
    """Mean of yb(x) - ya(x) over the x range both curves cover, with monotone piecewise-cubic (PCHIP)
    interpolation, as current Bjontegaard implementations do; NaN without enough overlap."""
    from scipy.interpolate import PchipInterpolator

    if len(xa) < 2 or len(xb) < 2:
        return float("nan")
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if hi - lo < min_overlap:
        return float("nan")
    grid = np.linspace(lo, hi, 200)
    gap = PchipInterpolator(xb, yb)(grid) - PchipInterpolator(xa, ya)(grid)
    return float(np.mean(gap))


def bd_rate(rate_a, psnr_a, rate_b, psnr_b) -> float:
    """Bjontegaard delta rate (%) of B vs A (negative: B needs fewer bits at equal PSNR), over the PSNR range
    both cover."""
    ra, pa = rd_front(rate_a, psnr_a)
    rb, pb = rd_front(rate_b, psnr_b)
    gap = _mean_gap(pa, np.log(ra), pb, np.log(rb), min_overlap=0.1)
    return float((np.exp(gap) - 1) * 100)


def bd_psnr(rate_a, psnr_a, rate_b, psnr_b) -> float:
    """Bjontegaard delta PSNR (dB) of B vs A (positive: B has higher PSNR at equal rate)."""
    ra, pa = rd_front(rate_a, psnr_a)
    rb, pb = rd_front(rate_b, psnr_b)
    return _mean_gap(np.log(ra), pa, np.log(rb), pb, min_overlap=0.05)


def _mean_curve(per_image: dict[str, list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    rows = list(per_image.values())
    rates = np.mean([[r["bpp"] for r in c] for c in rows], axis=0)
    return rates, np.mean([[r["psnr"] for r in c] for c in rows], axis=0)


def _operating_points(checkpoints: list[Path], levels: dict[int, float] | None):
    """(checkpoint, loaded, quality, step) per evaluated level: each checkpoint at step 1, or the one
    checkpoint at every level's step."""
    if levels:
        if len(checkpoints) != 1:
            raise SystemExit("--levels takes one checkpoint (the levels are its quantisation steps)")
        loaded = load_checkpoint(checkpoints[0])
        return [(checkpoints[0], loaded, q, step) for q, step in sorted(levels.items())]
    points = []
    for path in checkpoints:
        loaded = load_checkpoint(path)
        points.append((path, loaded, loaded.extras["quality"], 1.0))
    return points


def evaluate(checkpoints: list[Path], images: dict[str, np.ndarray], out: Path,
             levels: dict[int, float] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    curves = {name: {"JPEG": pillow_curve(img, "JPEG"), "WEBP": pillow_curve(img, "WEBP")}
              for name, img in images.items()}
    levels_out = []
    for ckpt_path, loaded, quality, step in _operating_points(checkpoints, levels):
        model = loaded.model
        nets, cm = TorchNetworks(model), codec_model(model, f"imagecodec-q{quality}", step=step)
        rows = []
        for name, image in images.items():
            data, enc = encode(image, nets, cm)
            rec, dec = decode(data, nets, cm)  # the real decoder: the reconstruction the bytes give
            assert np.array_equal(enc.symbols, dec.symbols)
            bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
            ours = psnr(image, rec)
            rows.append({"image": name, "bpp": bpp, "psnr": ours, "ms_ssim": ms_ssim(image, rec),
                         "encode_s": enc.seconds, "decode_s": dec.seconds, "hints": enc.hints,
                         "jpeg": matched(curves[name]["JPEG"], bpp), "webp": matched(curves[name]["WEBP"], bpp),
                         "jpeg_psnr_at_bpp": psnr_at(curves[name]["JPEG"], bpp),
                         "below_jpeg_range": below_range_verdict(curves[name]["JPEG"], bpp, ours),
                         "webp_psnr_at_bpp": psnr_at(curves[name]["WEBP"], bpp)})
        gap_jpeg = [r["psnr"] - r["jpeg_psnr_at_bpp"] for r in rows if np.isfinite(r["jpeg_psnr_at_bpp"])]
        gap_webp = [r["psnr"] - r["webp_psnr_at_bpp"] for r in rows if np.isfinite(r["webp_psnr_at_bpp"])]
        levels_out.append({"checkpoint": str(ckpt_path), "quality": quality, "step": step,
                           "lambda": loaded.extras["lambda"], "images": rows,
                           "bpp": float(np.mean([r["bpp"] for r in rows])),
                           "psnr": float(np.mean([r["psnr"] for r in rows])),
                           "ms_ssim": float(np.mean([r["ms_ssim"] for r in rows])),
                           "psnr_minus_jpeg_db": float(np.mean(gap_jpeg)) if gap_jpeg else float("nan"),
                           "psnr_minus_webp_db": float(np.mean(gap_webp)) if gap_webp else float("nan"),
                           "matched_images": len(gap_jpeg),
                           "dominates_cheapest_jpeg": sum(r["below_jpeg_range"] == "dominates" for r in rows)})
    levels = levels_out
    levels.sort(key=lambda lv: lv["bpp"])
    jpeg_rate, jpeg_psnr = _mean_curve({n: c["JPEG"] for n, c in curves.items()})
    webp_rate, webp_psnr = _mean_curve({n: c["WEBP"] for n, c in curves.items()})
    ours_rate = np.array([lv["bpp"] for lv in levels])
    ours_psnr = np.array([lv["psnr"] for lv in levels])
    summary: dict = {"images": sorted(images), "levels": levels,
                     "jpeg_curve": {"bpp": jpeg_rate.tolist(), "psnr": jpeg_psnr.tolist()},
                     "webp_curve": {"bpp": webp_rate.tolist(), "psnr": webp_psnr.tolist()}}
    if len(levels) >= 4:
        summary["bd_rate_vs_jpeg_percent"] = bd_rate(jpeg_rate, jpeg_psnr, ours_rate, ours_psnr)
        summary["bd_psnr_vs_jpeg_db"] = bd_psnr(jpeg_rate, jpeg_psnr, ours_rate, ours_psnr)
        summary["bd_rate_vs_webp_percent"] = bd_rate(webp_rate, webp_psnr, ours_rate, ours_psnr)
        # BD-rate only speaks for the PSNR range both curves cover (and our points on the RD front)
        front_rate, front_psnr = rd_front(ours_rate, ours_psnr)
        summary["rd_front_bpp"] = front_rate.tolist()
        summary["bd_vs_jpeg_psnr_range_db"] = [max(front_psnr.min(), jpeg_psnr.min()),
                                               min(front_psnr.max(), jpeg_psnr.max())]
    (out / "rd.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out / "rd.png")
    return summary


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(summary["jpeg_curve"]["bpp"], summary["jpeg_curve"]["psnr"], "o-", label="JPEG (Pillow)")
    ax.plot(summary["webp_curve"]["bpp"], summary["webp_curve"]["psnr"], "s-", label="WebP (Pillow)")
    ax.plot([lv["bpp"] for lv in summary["levels"]], [lv["psnr"] for lv in summary["levels"]], "^-",
            label="HPCM-RWKV (actual bitstream)")
    ax.set_xlabel("bpp")
    ax.set_ylabel("PSNR-RGB (dB)")
    ax.set_xlim(0, 1.2)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_levels(text: str | None) -> dict[int, float] | None:
    if not text:
        return None
    if text == "default":
        from training.imagecodec.default import STEP_LEVELS

        return dict(STEP_LEVELS)
    return {int(q): float(step) for q, step in (item.split(":") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    parser.add_argument("--images", type=Path, default=None, help="folder of evaluation images")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="a built corpus folder (scripts/build_codec_corpus.py): its held-out photographs, "
                             "centre-cropped to 768x512")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levels", default=None,
                        help="'default' (STEP_LEVELS, the levels served before issue 30) or q:step,...: "
                             "one checkpoint at each level's step")
    args = parser.parse_args()
    if args.corpus:
        images = corpus_heldout(args.corpus)
    else:
        images = folder_images(args.images) if args.images else heldout_photos()
    summary = evaluate(args.checkpoints, images, args.out, _parse_levels(args.levels))
    print(f"{'q':>3} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8} | {'JPEG bpp':>8} {'PSNR':>6} | {'WebP bpp':>8} {'PSNR':>6}"
          f" | {'dB vs JPEG':>10} {'(n)':>4} {'vs WebP':>8} (matched bpp) | under JPEG's cheapest, better")
    for lv in summary["levels"]:
        jb = np.mean([r["jpeg"]["bpp"] for r in lv["images"]])
        jp = np.mean([r["jpeg"]["psnr"] for r in lv["images"]])
        wb = np.mean([r["webp"]["bpp"] for r in lv["images"]])
        wp = np.mean([r["webp"]["psnr"] for r in lv["images"]])
        print(f"{lv['quality']!s:>3} {lv['bpp']:7.3f} {lv['psnr']:7.2f} {lv['ms_ssim']:8.4f} | {jb:8.3f} {jp:6.2f} | "
              f"{wb:8.3f} {wp:6.2f} | {lv['psnr_minus_jpeg_db']:+10.2f} {lv['matched_images']:4d} "
              f"{lv['psnr_minus_webp_db']:+8.2f} | {lv['dominates_cheapest_jpeg']}")
    for key in ("bd_rate_vs_jpeg_percent", "bd_psnr_vs_jpeg_db", "bd_rate_vs_webp_percent"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}")
    if "bd_vs_jpeg_psnr_range_db" in summary:
        lo, hi = summary["bd_vs_jpeg_psnr_range_db"]
        print(f"(over PSNR {lo:.2f}..{hi:.2f} dB, our RD-front points at {summary['rd_front_bpp']} bpp)")
    print(f"wrote {args.out / 'rd.json'} and {args.out / 'rd.png'}")


if __name__ == "__main__":
    main()

