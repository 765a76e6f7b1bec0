"""Codec configuration: widths/depths are config values; the structure (strides, scales, steps) is fixed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
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
