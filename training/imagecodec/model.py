"""HPCM codec: analysis/synthesis transforms, hyperprior, and the hierarchical progressive context model.

Entropy model for y: a conditional *Gaussian* (not HPCM's generalised Gaussian beta=1.5), with
symbols round(y - mu), y_hat = symbol + mu. Prior for z: a learned per-channel Gaussian (mean, scale).
The network predicts log-scales; the codec snaps them to the scale table (families/imagecodec).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from families.imagecodec.schedule import NUM_STEPS, STEP_FACTOR, known_before, step_masks
from families.imagecodec.tables import SCALE_MAX, SCALE_MIN
from training.imagecodec.config import CodecConfig
from training.imagecodec.layers import CrossAttentionCell, ResBlock, RWKVBlock, RWKVCell


def _stage(cin: int, cout: int, stride: int, blocks: int, transpose: bool) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, stride, stride=stride)
    return [conv] + [ResBlock(cout) for _ in range(blocks)]


class AnalysisTransform(nn.Module):
    """g_a: 4x4/s4 -> blocks -> 2x2/s2 -> blocks -> 2x2/s2 -> blocks -> 3x3/s1 projection to M.

    The spec lists a fourth stride-2 conv, but its strides then multiply to 32 while it also fixes y at
    H/16 and z at H/64 (and the padding to 64); we keep H/16 and make the 384 -> M projection stride 1.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.widths
        d1, d2, d3 = cfg.depths
        self.net = nn.Sequential(
            *_stage(3, c1, 4, d1, False), *_stage(c1, c2, 2, d2, False), *_stage(c2, c3, 2, d3, False),
            nn.Conv2d(c3, cfg.M, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SynthesisTransform(nn.Module):
    """g_s: the mirror of g_a (3x3 projection, transposed 2x2/s2 convs, last one 4x4/s4 to 3 channels)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.widths
        d1, d2, d3 = cfg.depths
        self.net = nn.Sequential(
            nn.Conv2d(cfg.M, c3, 3, padding=1), *[ResBlock(c3) for _ in range(d3)],
            *_stage(c3, c2, 2, d2, True), *_stage(c2, c1, 2, d1, True),
            nn.ConvTranspose2d(c1, 3, 4, stride=4),
        )

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.net(y_hat)


class HyperAnalysis(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(*_stage(cfg.M, cfg.N, 2, cfg.hyper_depth, False), nn.Conv2d(cfg.N, cfg.N, 2, stride=2))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """h_s: z_hat -> (log-scales, means) of y, 2M channels at the latent resolution."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *_stage(cfg.N, cfg.N, 2, cfg.hyper_depth, True), nn.ConvTranspose2d(cfg.N, 2 * cfg.M, 2, stride=2),
        )

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.net(z_hat)


def _scatter_up(h: torch.Tensor) -> torch.Tensor:
    """Place a coarse grid at the (even, even) positions of a 2x finer grid, zeros elsewhere."""
    zero = torch.zeros_like(h)
    b, c, hh, ww = h.shape
    return F.pixel_shuffle(torch.stack([h, zero, zero, zero], dim=2).reshape(b, 4 * c, hh, ww), 2)


class ScaleTransition(nn.Module):
    """Carry the context to the next (2x finer) scale: scatter, add the hyperprior params of the new
    positions, then the context net (1x1 conv, or one RWKV fusion block in Phase 3/4)."""

    def __init__(self, dim: int, rwkv_fusion: bool) -> None:
        super().__init__()
        self.net: nn.Module = RWKVBlock(dim, 2) if rwkv_fusion else nn.Conv2d(dim, dim, 1)

    def forward(self, h: torch.Tensor, hp_grid: torch.Tensor) -> torch.Tensor:
        coarse = _scatter_up(torch.ones_like(h[:, :1]))
        return self.net(_scatter_up(h) + hp_grid * (1.0 - coarse))


class SpatialPrior(nn.Module):
    """Depthwise residual blocks (+ optional RWKV blocks, Phase 4 at s3) -> 1x1 -> 2M parameter deltas."""

    def __init__(self, width: int, out: int, blocks: int, rwkv_blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResBlock(width) for _ in range(blocks)]
        layers += [RWKVBlock(width, 2) for _ in range(rwkv_blocks)]
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, out, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class ContextInit(nn.Module):
    """Step 1: the hyperprior params alone; this graph only builds the initial context state at s1."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * cfg.M, 2 * cfg.M, 1)

    def forward(self, hp: torch.Tensor) -> torch.Tensor:
        return self.conv(hp[:, :, ::4, ::4])


class ContextStep(nn.Module):
    """Steps 2..11: (h_prev, y_hat so far, hyperprior params, decoded mask) -> (h, log-scale, mean).

    Inputs are at the full latent resolution; the step works on its scale's grid (every f-th position)
    and returns parameters on that grid. Modules passed in are shared by the steps of one scale."""

    def __init__(self, cfg: CodecConfig, step: int, embed: nn.Module, cell: nn.Module, prior: nn.Module,
                 transition: nn.Module | None) -> None:
        super().__init__()
        m = cfg.M
        self.factor = STEP_FACTOR[step]
        self.M = m
        self.embed = embed
        self.cell = cell
        self.transition = transition
        width = cfg.prior_width or 2 * m
        self.adaptor = nn.Conv2d(4 * m, width, 1)  # [h (2M), y_hat (M), known (M)] -> prior width
        self.gain = nn.Parameter(torch.ones(1, width, 1, 1))  # the per-step gain of the shared prior
        self.prior = prior

    def forward(self, h_prev: torch.Tensor, y_hat: torch.Tensor, hp: torch.Tensor, known: torch.Tensor):
        f = self.factor
        yg, kg, hpg = y_hat[:, :, ::f, ::f], known[:, :, ::f, ::f], hp[:, :, ::f, ::f]
        if self.transition is not None:
            h_prev = self.transition(h_prev, hpg)
        x = self.embed(torch.cat([yg, kg], dim=1))
        h = self.cell(x, h_prev)
        delta = self.prior(self.adaptor(torch.cat([h, yg, kg], dim=1)) * self.gain)
        log_scale = hpg[:, : self.M] + delta[:, : self.M]
        mean = hpg[:, self.M :] + delta[:, self.M :]
        return h, log_scale, mean


class ContextModel(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        m2 = 2 * cfg.M
        width = cfg.prior_width or m2
        kinds, rates = cfg.cell_kinds(), cfg.cell_hidden_rates()
        self.init = ContextInit(cfg)
        embeds, cells, priors = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in range(3):
            embeds.append(nn.Conv2d(2 * cfg.M, m2, 1))
            if kinds[s] == "attn":
                cells.append(CrossAttentionCell(m2, cfg.attn_windows[s], cfg.attn_head_dim))
            else:
                cells.append(RWKVCell(m2, rates[s]))
            rwkv_prior = 2 if (s == 2 and cfg.rwkv_spatial_prior) else 0
            priors.append(SpatialPrior(width, m2, cfg.prior_blocks, rwkv_prior))
        self.transitions = nn.ModuleList([ScaleTransition(m2, cfg.rwkv_fusion) for _ in range(2)])
        scale_of = {4: 0, 2: 1, 1: 2}
        steps = []
        for k in range(1, NUM_STEPS):
            s = scale_of[STEP_FACTOR[k]]
            first_of_scale = STEP_FACTOR[k] != STEP_FACTOR[k - 1]
            transition = self.transitions[s - 1] if first_of_scale else None
            steps.append(ContextStep(cfg, k, embeds[s], cells[s], priors[s], transition))
        self.steps = nn.ModuleList(steps)
        self._embeds, self._cells, self._priors = embeds, cells, priors


def scatter_grid(grid: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    if factor == 1:
        return grid
    full = grid.new_zeros(grid.shape[0], grid.shape[1], height, width)
    full[:, :, ::factor, ::factor] = grid
    return full


def gaussian_likelihood(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(round bin around x) under N(mean, scale), computed on the upper-tail side for precision."""
    d = (x - mean).abs()
    upper = 0.5 * torch.erfc((d - 0.5) / (scale * math.sqrt(2.0)))
    lower = 0.5 * torch.erfc((d + 0.5) / (scale * math.sqrt(2.0)))
    return (upper - lower).clamp(min=1e-9)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _quantise(y: torch.Tensor, mean: torch.Tensor, step: torch.Tensor | None) -> torch.Tensor:
    """y_hat as the codec makes it: mu + Delta * round((y - mu) / Delta) (straight-through rounding);
    step None is Delta = 1 with the arithmetic of before steps existed."""
    if step is None:
        return _ste_round(y - mean) + mean
    return mean + step * _ste_round((y - mean) / step)


class ImageCodec(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.g_a = AnalysisTransform(cfg)
        self.g_s = SynthesisTransform(cfg)
        self.h_a = HyperAnalysis(cfg)
        self.h_s = HyperSynthesis(cfg)
        self.context = ContextModel(cfg)
        self.z_mean = nn.Parameter(torch.zeros(cfg.N))
        self.z_log_scale = nn.Parameter(torch.zeros(cfg.N))
        if cfg.levels:  # a variable-rate model: per level, per channel log quantisation step of y
            self.log_steps = nn.Parameter(torch.zeros(cfg.levels, cfg.M))
        self._mask_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _masks(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w)
        if key not in self._mask_cache:
            self._mask_cache[key] = (torch.from_numpy(step_masks(self.cfg.M, h, w)),
                                     torch.from_numpy(known_before(self.cfg.M, h, w)))
        masks, known = self._mask_cache[key]
        return masks.to(device), known.to(device)

    def z_scale(self) -> torch.Tensor:
        return torch.exp(self.z_log_scale).clamp(SCALE_MIN, SCALE_MAX)

    def level_steps(self, level: int) -> torch.Tensor:
        """The (M,) quantisation steps of a trained level (0-based) of a variable-rate model."""
        if not self.cfg.levels:
            raise ValueError("this model has no trained levels (CodecConfig.levels = 0)")
        return torch.exp(self.log_steps[level])

    def forward(self, x: torch.Tensor, level: int | None = None) -> dict[str, torch.Tensor]:
        """Training/eval pass: x in [0, 1], (B, 3, H, W) with H, W multiples of 64. `level` (variable-rate
        models): code y with that level's per-channel steps Delta - symbols round((y - mu) / Delta) under the
        Gaussian of scale sigma / Delta, y_hat = mu + Delta * symbol, as the codec does."""
        y = self.g_a(x)
        z = self.h_a(y)
        zm = self.z_mean.view(1, -1, 1, 1)
        zs = self.z_scale().view(1, -1, 1, 1)
        noise_z = torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.zeros_like(z)
        z_lik = gaussian_likelihood(z + noise_z if self.training else torch.round(z - zm) + zm, zm, zs)
        z_hat = _ste_round(z - zm) + zm
        hp = self.h_s(z_hat)
        step = None if level is None else self.level_steps(level).view(1, -1, 1, 1)
        log_scale, mean, y_hat = self.progressive(y, hp, step)
        if step is None:
            scale = torch.exp(log_scale).clamp(SCALE_MIN, SCALE_MAX)
            if self.training:
                y_lik = gaussian_likelihood(y + torch.empty_like(y).uniform_(-0.5, 0.5), mean, scale)
            else:
                y_lik = gaussian_likelihood(y_hat, mean, scale)
        else:  # in symbol units: the codec's table holds sigma / Delta
            scale = torch.exp(log_scale - torch.log(step)).clamp(SCALE_MIN, SCALE_MAX)
            noisy = y + step * torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else y_hat
            u = (noisy - mean) / step
            y_lik = gaussian_likelihood(u, torch.zeros_like(u), scale)
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "y_likelihoods": y_lik, "z_likelihoods": z_lik}

    def progressive(self, y: torch.Tensor, hp: torch.Tensor, step: torch.Tensor | None = None):
        """The 11-step loop exactly as the codec runs it (with STE rounding instead of coding); `step`: the
        (1, M, 1, 1) quantisation steps of y (None: 1)."""
        b, m, h, w = y.shape
        masks, known = self._masks(h, w, y.device)
        log_scale = masks[0] * hp[:, :m]
        mean = masks[0] * hp[:, m:]
        y_hat = masks[0] * _quantise(y, hp[:, m:], step)
        state = self.context.init(hp)
        for k, context_step in enumerate(self.context.steps, start=1):
            state, ls_g, mu_g = context_step(state, y_hat, hp, known[k].expand(b, -1, -1, -1))
            f = STEP_FACTOR[k]
            mu_k = scatter_grid(mu_g, f, h, w)
            log_scale = log_scale + masks[k] * scatter_grid(ls_g, f, h, w)
            mean = mean + masks[k] * mu_k
            y_hat = y_hat + masks[k] * _quantise(y, mu_k, step)
        return log_scale, mean, y_hat


def rd_loss(out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
    """CompressAI-style: lambda * 255^2 * MSE + bpp."""
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (-torch.log2(out["y_likelihoods"]).sum() - torch.log2(out["z_likelihoods"]).sum()) / num_pixels
    mse = F.mse_loss(out["x_hat"], x)
    return {"loss": lmbda * 255.0**2 * mse + bpp, "bpp": bpp, "mse": mse}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_hash(model: nn.Module) -> str:
    """Stable identity of the weights (goes into the bitstream header as the model's version hash)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()
