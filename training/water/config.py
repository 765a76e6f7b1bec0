"""Configuration of the multimodal hydrology MAE (spec: shared/specs/water.md).

`WaterConfig` is one training run: `model` (data shape, model size and the design switches of the spec) and
`training` (steps, batch, learning rate, seed, synthetic split sizes, device). Model presets: `full_model()` is
the ~25.6M reference model of the spec, `small_model()` the CPU default, `fast_model()` the test model;
`load_config("small")` (or a JSON file) gives a whole run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from families.water.preprocessing import IMAGE_MODALITIES, STATIC_NAMES

MASK_SCHEDULES: tuple[str, ...] = ("random", "mixed")


@dataclass
class WaterModelConfig:
    """What a checkpoint's `config` holds: the data shape and the model."""

    # Data shape.
    height: int = 40
    width: int = 30
    patch: int = 10
    frames: int = 5  # T of the gridded modalities
    series_len: int = 20  # T_v of the vector modalities
    n_static: int = len(STATIC_NAMES)
    # Encoders.
    d_model: int = 256
    heads: int = 8
    image_layers: int = 6
    vector_layers: int = 4
    mlp_ratio: float = 4.0
    # Decoders.
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    # Design switches of the spec.
    use_cross_attn: bool = True  # False = old pooled-token / self-attention decoder (baseline)
    decoder_self_attn: bool = False
    use_weighted_fm: bool = False
    use_fm_layers: list[int] | None = None  # encoder layers fed to the WeightedFeatureMaps (None = all)
    use_input: bool = False  # the patch embedding as one more WeightedFeatureMaps layer
    kept_mask_ratio: float = 1.0  # fraction of masked tokens decoded and scored during training
    mask_ratio: float = 0.75
    # Training masks (masking.training_masks): "random" = the spec's MAE masks, mask_ratio of every modality's
    # tokens; "mixed" = random, missing days and missing region per sample (what the served model learned).
    mask_schedule: str = "mixed"
    # Hidden input values carry a simple gap-filling prior (families.water.preprocessing.gap_prior:
    # linear in time, else nearest visible pixel, else nearest day, else the mean); the decoders see it at
    # their queries and predict a correction to it (residual), so the model starts at the best simple fill.
    prior_fill: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"grid {self.height}x{self.width} is not divisible by patch {self.patch}")
        if self.d_model % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("model widths must be divisible by the head counts")
        if not 0.0 < self.kept_mask_ratio <= 1.0:
            raise ValueError("kept_mask_ratio must be in (0, 1]")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}")

    @property
    def grid_patches(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch

    @property
    def image_tokens(self) -> int:
        hp, wp = self.grid_patches
        return self.frames * hp * wp

    def tokens(self, modality: str) -> int:
        return self.image_tokens if modality in IMAGE_MODALITIES else self.series_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WaterModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainingConfig:
    """How a model is trained: AdamW with warm-up + cosine decay, validated every `eval_every` steps."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    eval_every: int = 100
    time_limit_s: float | None = None  # stop early after this many seconds
    # Synthetic splits (training.water.data.generate) when no dataset folder is given.
    n_train: int = 1536
    n_val: int = 128
    val_fraction: float = 0.1  # of a dataset folder, held out (its last samples) for validation
    device: str = "cpu"  # cpu, cuda or cuda:N
    workers: int = 1  # threads building batches ahead (the numpy gap-filling prior is the slow part on a GPU)
    threads: int | None = None  # torch CPU threads during training (None: leave the setting alone)
    save_every_s: float = 300.0  # seconds between resumable states (<out>/train_state.pt)
    resume: bool = False  # continue <out>/train_state.pt

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")


@dataclass
class WaterConfig:
    """One training run: the model and how to train it."""

    model: WaterModelConfig = field(default_factory=WaterModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "training": asdict(self.training)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WaterConfig:
        return cls(model=WaterModelConfig.from_dict(data.get("model", {})),
                   training=TrainingConfig(**data.get("training", {})))


def full_model(**overrides: Any) -> WaterModelConfig:
    """The reference model of the spec: 290x180 grids, patch 10, T=5, T_v=20, d_model 256 (~25.6M), trained
    with the spec's random 75 % masks."""
    return WaterModelConfig(**{"height": 290, "width": 180, "mask_schedule": "random", **overrides})


def small_model(**overrides: Any) -> WaterModelConfig:
    """The CPU default served by `make serve` (trains in about a minute on 2 cores)."""
    base = dict(height=40, width=30, d_model=64, heads=4, image_layers=2, vector_layers=2, mlp_ratio=2.0,
                decoder_dim=64, decoder_depth=2, decoder_heads=4, decoder_mlp_ratio=2.0, prior_fill=True)
    return WaterModelConfig(**{**base, **overrides})


def fast_model(**overrides: Any) -> WaterModelConfig:
    """Tiny model for tests."""
    base = dict(height=20, width=20, d_model=32, heads=2, image_layers=2, vector_layers=2, mlp_ratio=2.0,
                decoder_dim=32, decoder_depth=2, decoder_heads=2, decoder_mlp_ratio=2.0, prior_fill=True)
    return WaterModelConfig(**{**base, **overrides})


MODEL_PRESETS = {"fast": fast_model, "small": small_model, "full": full_model}


def load_config(name_or_path: str | Path) -> WaterConfig:
    """A preset by name (`fast`, `small`, `full`: that model, the default training), or a JSON file
    `{"model": {...}, "training": {...}}` (keys left out keep their defaults)."""
    if str(name_or_path) in MODEL_PRESETS:
        return WaterConfig(model=MODEL_PRESETS[str(name_or_path)]())
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown water config {str(name_or_path)!r}: a preset ({', '.join(MODEL_PRESETS)}) "
                         "or a JSON file")
    return WaterConfig.from_dict(json.loads(path.read_text()))
