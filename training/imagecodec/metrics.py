"""Image quality metrics of the codec reports: PSNR on RGB and MS-SSIM (Wang, Simoncelli & Bovik 2003).

MS-SSIM follows the reference definition: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255,
five scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling between scales,
contrast-structure terms at scales 1-4 and the full SSIM at scale 5, on 'valid' windows. It is computed on
each RGB channel and averaged over the three (as CompressAI / pytorch-msssim report it for RGB codecs);
negative terms are clipped at 0 so the weighted product stays defined. Images too small for five scales
(under 11 * 2^4 = 176 pixels on the short side) use the scales that fit, weights renormalised.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW, SIGMA = 11, 1.5
K1, K2, DATA_RANGE = 0.01, 0.03, 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images over all pixels and channels (MSE capped at 1e-10)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(DATA_RANGE**2 / max(mse, 1e-10)))


def _window() -> torch.Tensor:
    g = torch.exp(-((torch.arange(WINDOW, dtype=torch.float32) - WINDOW // 2) ** 2) / (2 * SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The 11x11 Gaussian window over the valid positions, as two 1-D passes (it is separable)."""
    channels = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSIM, contrast-structure) per channel, each the mean over the valid windows."""
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mu_x**2
    syy = _blur(y * y, g) - mu_y**2
    sxy = _blur(x * y, g) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).mean(dim=(0, 2, 3)), cs.mean(dim=(0, 2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two uint8 RGB (H, W, 3) images (1.0 for identical images)."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    # float32 is exact enough here (uint8 data: the variances' rounding is ~1e-2, c2 is 58.5) and twice as fast
    x = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(np.array(b)).permute(2, 0, 1)[None].float()
    win = _window()
    scales = max(1, min(len(MS_SSIM_WEIGHTS), int(np.floor(np.log2(min(a.shape[:2]) / WINDOW))) + 1))
    terms = []
    for scale in range(scales):
        ssim, cs = _ssim_terms(x, y, win)
        terms.append(ssim if scale == scales - 1 else cs)
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    values = torch.stack(terms).double().clamp(min=0.0)  # (scales, channels)
    per_channel = torch.prod(values ** weights[:, None], dim=0)
    return float(per_channel.mean())
