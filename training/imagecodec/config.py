"""Codec configuration: widths/depths are config values; the structure (strides, scales, steps) is fixed.

`CodecConfig` is the model (what a checkpoint's `config` holds); `ImageCodecConfig` is one training run: the
model, the size preset it came from, the quality level (its lambda) and how to train it. Presets:
`load_config("small")` (the CPU default, M=96, N=64), `"tiny"` (tests), `"base"` (HPCM-Base, alias `"hpcm_base"`),
or a JSON file `{"size": ..., "model": {...}, ...}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

Phase = Literal["baseline", "phase1", "phase2", "phase3", "phase4"]
PHASES: tuple[str, ...] = ("baseline", "phase1", "phase2", "phase3", "phase4")


@dataclass
class CodecConfig:
    # g_a / g_s widths after the stride-4, -2, -2 stages, and residual blocks per stage.
    widths: tuple[int, int, int] = (32, 48, 64)
    depths: tuple[int, int, int] = (1, 1, 1)
    M: int = 96  # latent y channels
    N: int = 64  # hyper-latent z channels
    hyper_depth: int = 1  # residual blocks in h_a / h_s
    phase: str = "phase2"
    attn_windows: tuple[int, int, int] = (4, 8, 8)  # baseline cross-attention windows for s1/s2/s3
    attn_head_dim: int = 32
    rwkv_hidden_rates: tuple[int, int, int] = (2, 3, 4)  # phase 2 channel-mix widths for s1/s2/s3
    prior_width: int = 0  # spatial-prior width (0 -> 2M)
    prior_blocks: int = 2  # depthwise residual blocks per spatial prior
    # Trained rate levels of a variable-rate model (0: one operating point). Each level has its own learned
    # per-channel quantisation step of y (ImageCodec.log_steps, shape (levels, M)) and its own lambda.
    levels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if self.levels < 0:
            raise ValueError("levels must be >= 0")
        if self.M % 4:
            raise ValueError("M must be a multiple of 4 (channel quarters of the schedule)")
        self.widths = tuple(self.widths)
        self.depths = tuple(self.depths)
        self.attn_windows = tuple(self.attn_windows)
        self.rwkv_hidden_rates = tuple(self.rwkv_hidden_rates)

    def cell_kinds(self) -> tuple[str, str, str]:
        """Context cell per scale: 'attn' (windowed cross-attention) or 'rwkv'."""
        if self.phase == "baseline":
            return ("attn", "attn", "attn")
        if self.phase == "phase1":
            return ("attn", "attn", "rwkv")
        return ("rwkv", "rwkv", "rwkv")

    def cell_hidden_rates(self) -> tuple[int, int, int]:
        if self.phase == "phase1":
            return (self.rwkv_hidden_rates[0], self.rwkv_hidden_rates[1], 4)
        return self.rwkv_hidden_rates

    @property
    def rwkv_fusion(self) -> bool:
        return self.phase in ("phase3", "phase4")

    @property
    def rwkv_spatial_prior(self) -> bool:
        return self.phase == "phase4"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        return cls(**data)


def small_config(**overrides: Any) -> CodecConfig:
    """The CPU/default size (M=96, N=64)."""
    return CodecConfig(**overrides)


def tiny_config(**overrides: Any) -> CodecConfig:
    """For tests: same structure, minimal widths."""
    base = dict(widths=(8, 12, 16), depths=(1, 1, 1), M=16, N=12, hyper_depth=1, attn_head_dim=8,
                prior_blocks=1)
    base.update(overrides)
    return CodecConfig(**base)


def hpcm_base_config(**overrides: Any) -> CodecConfig:
    """HPCM-Base widths: 96/192/384, M=320, N=256, blocks 2/2/4, hyper 3 blocks."""
    base = dict(widths=(96, 192, 384), depths=(2, 2, 4), M=320, N=256, hyper_depth=3, prior_blocks=3)
    base.update(overrides)
    return CodecConfig(**base)


SIZES = {"tiny": tiny_config, "small": small_config, "base": hpcm_base_config}
PRESET_ALIASES = {"hpcm_base": "base"}
# CompressAI's MSE lambdas; quality level q uses LAMBDAS[q].
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483}


@dataclass
class ImageCodecConfig:
    """One training run = one quality level (one lambda) = one exported model version."""

    model: CodecConfig = field(default_factory=small_config)
    size: str = "small"  # the size preset `model` came from (recorded in the checkpoint's provenance)
    quality: int = 3
    lmbda: float | None = None  # None: LAMBDAS[quality]
    steps: int = 2000
    seconds: float | None = None  # stop after this wall time (the learning rate then decays by time)
    batch: int = 8
    crop: int = 128
    scales: tuple[float, ...] = (1.0,)  # random crops also from the images downscaled by these factors
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    init: str | None = None  # start from this checkpoint's weights (a continued round)
    resume: bool = False  # continue <out>/train_state.pt exactly (weights, optimiser, step, clock, RNGs)
    save_every_s: float = 300.0  # how often the resumable state is written (and on SIGTERM / SIGINT)
    eval_every: int = 0  # steps between validations with the real bitstream (0: none; then the last step)
    # Variable rate: one model, one lambda per trained level (model.levels = len(lambdas)); every optimiser step
    # trains one level (`training.imagecodec.train.level_of_step`). Empty: one lambda (`quality` / `lmbda`).
    lambdas: tuple[float, ...] = ()
    step_lr: float = 3e-3  # learning rate of the levels' log quantisation steps (they must move fast)
    val_corpus: str | None = None  # validate on this corpus's held-out photographs (default: scikit-image's)

    def __post_init__(self) -> None:
        if self.quality not in LAMBDAS:
            raise ValueError(f"quality must be one of {sorted(LAMBDAS)}, got {self.quality!r}")
        if self.steps < 1 or self.batch < 1 or self.crop < 1 or self.log_every < 1:
            raise ValueError("steps, batch, crop and log_every must be positive")
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales!r}")
        if self.save_every_s <= 0 or self.eval_every < 0:
            raise ValueError("save_every_s must be positive and eval_every >= 0")
        self.lambdas = tuple(float(v) for v in self.lambdas)
        if any(not v > 0 for v in self.lambdas):
            raise ValueError(f"lambdas must be positive, got {self.lambdas!r}")
        if self.model.levels != len(self.lambdas):
            raise ValueError(f"model.levels ({self.model.levels}) must equal the number of lambdas "
                             f"({len(self.lambdas)})")

    @property
    def lambda_(self) -> float:
        """The rate-distortion trade-off this run trains for."""
        return self.lmbda if self.lmbda is not None else LAMBDAS[self.quality]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageCodecConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown imagecodec config keys {sorted(unknown)}")
        size = PRESET_ALIASES.get(str(data.get("size", "small")), str(data.get("size", "small")))
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
        model = SIZES[size](**data.get("model", {}))
        return cls(**{**data, "size": size, "model": model})


def load_config(preset: str | Path) -> ImageCodecConfig:
    """A size preset by name (`tiny`, `small`, `base` / `hpcm_base`: that model, the default training) or a JSON
    file of `ImageCodecConfig` fields (`model` holds overrides of its size preset)."""
    name = PRESET_ALIASES.get(str(preset), str(preset))
    if name in SIZES:
        return ImageCodecConfig(model=SIZES[name](), size=name)
    path = Path(preset)
    if not path.is_file():
        presets = ", ".join([*SIZES, *PRESET_ALIASES])
        raise ValueError(f"unknown imagecodec config {str(preset)!r}: a preset ({presets}) or a JSON file")
    return ImageCodecConfig.from_dict(json.loads(path.read_text()))
