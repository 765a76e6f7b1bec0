"""Configurations of the weld embedding model and its training: `small` (CPU, tests, default model) and
`full` (the spec's real sizes: V-JEPA 2 ViT-L, DINOv2-base, AST, 32 frames / 224 px).

The encoder sections hold keyword arguments of the `transformers` config classes; `*_pretrained` points to
a local directory (`save_pretrained` layout) whose weights are loaded instead. Nothing is ever fetched
from a hub.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from families.weld.preprocessing import PreprocessParams


@dataclass
class ModelConfig:
    video_encoder: dict[str, Any]
    photo_encoder: dict[str, Any]
    audio_encoder: dict[str, Any]
    sensor_dim: int = 256
    sensor_layers: int = 4
    sensor_heads: int = 8
    sensor_ff: int = 1024
    sensor_patch: int = 4  # time steps per sensor token
    fusion_dim: int = 512
    fusion_tokens: int = 4
    fusion_heads: int = 8
    fusion_dropout: float = 0.1
    mlp_hidden: int = 1024
    embed_dim: int = 512
    photo_aggregation: str = "tokens"  # tokens (5 angle tokens) | mean | max | concat
    freeze_backbones: bool = True
    video_pretrained: str | None = None
    photo_pretrained: str | None = None
    audio_pretrained: str | None = None


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    classes_per_batch: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 10
    warmup_start_lr: float = 1e-7
    min_lr: float = 1e-6
    grad_clip: float = 1.0
    temperature: float = 0.07
    ce_weight: float = 0.0  # 0 = pure SupCon; otherwise (1 - w) * SupCon + w * CE
    amp: bool = False  # mixed precision (CUDA only)
    patience: int = 10
    seed: int = 0
    incomplete_policy: str = "skip"  # skip | zero_fill
    val_fraction: float = 0.15  # used only when the manifest has no VAL split
    knn_k: int = 5
    knn_metric: str = "cosine"
    max_seconds: float | None = None  # training-time budget (stops like early stopping)
    max_steps: int | None = None  # stop after this many optimiser steps (None: the epochs decide)
    threads: int | None = None  # torch CPU threads during training (None: leave the setting alone)
    save_every_s: float = 300.0  # seconds between resumable states (<out>/train_state.pt)
    resume: bool = False  # continue <out>/train_state.pt
    # Modalities a served version may go without (export declares them optional by default) and the chance
    # that training drops each of them from a sample (training/weld/modality_dropout.py); 0 = never.
    optional_modalities: list[str] = field(default_factory=list)
    modality_dropout: float = 0.0
    # Staged fine-tuning: backbones frozen for the first `unfreeze_after` epochs, then trained with their own
    # peak learning rate `backbone_lr` (default lr / 10; same warmup + cosine shape). None = as freeze_backbones.
    unfreeze_after: int | None = None
    backbone_lr: float | None = None


@dataclass
class WeldConfig:
    name: str
    model: ModelConfig
    train: TrainConfig
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": asdict(self.model), "train": asdict(self.train),
                "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeldConfig:
        return cls(name=data["name"], model=ModelConfig(**data["model"]), train=TrainConfig(**data["train"]),
                   preprocess=PreprocessParams.from_dict(data["preprocess"]))

    def copy(self) -> WeldConfig:
        return copy.deepcopy(self)


def small() -> WeldConfig:
    """Tiny encoders of the same classes; trains on CPU in about a minute on synthetic data."""
    frames, video_px, photo_px, mel, audio_frames = 4, 32, 32, 32, 64
    model = ModelConfig(
        video_encoder=dict(crop_size=video_px, frames_per_clip=frames, patch_size=8, tubelet_size=2,
                           hidden_size=48, num_hidden_layers=1, num_attention_heads=4, mlp_ratio=2.0,
                           pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=4,
                           num_pooler_layers=1),
        photo_encoder=dict(image_size=photo_px, patch_size=8, hidden_size=48, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=96),
        audio_encoder=dict(num_mel_bins=mel, max_length=audio_frames, patch_size=16, frequency_stride=8,
                           time_stride=8, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=96),
        sensor_dim=32, sensor_layers=1, sensor_heads=4, sensor_ff=64, sensor_patch=8,
        fusion_dim=64, fusion_tokens=4, fusion_heads=8, fusion_dropout=0.1, mlp_hidden=256, embed_dim=512,
        freeze_backbones=False,  # no pretrained weights here: random frozen backbones would learn nothing
    )
    train = TrainConfig(epochs=40, batch_size=24, classes_per_batch=6, lr=5e-4, weight_decay=1e-2,
                        warmup_epochs=3, warmup_start_lr=1e-5, min_lr=1e-5, patience=12, ce_weight=0.2)
    preprocess = PreprocessParams(video_frames=frames, video_size=video_px, num_photos=5, photo_size=photo_px,
                                  audio_mel_bins=mel, audio_frames=audio_frames, sensor_steps=256)
    return WeldConfig(name="small", model=model, train=train, preprocess=preprocess)


def full() -> WeldConfig:
    """The spec's sizes (~516M parameters, backbones frozen). Do not build this in tests."""
    model = ModelConfig(
        # facebook/vjepa2-vitl-fpc64-256 architecture; crop_size must equal the input size (RoPE grid).
        video_encoder=dict(crop_size=224, frames_per_clip=32, patch_size=16, tubelet_size=2, hidden_size=1024,
                           num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4.0),
        # facebook/dinov2-base
        photo_encoder=dict(image_size=224, patch_size=14, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072),
        # MIT/ast-finetuned-audioset-14-14-0.443 geometry; max_length sizes the position table.
        audio_encoder=dict(num_mel_bins=128, max_length=256, patch_size=16, frequency_stride=10, time_stride=10,
                           hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        sensor_dim=256, sensor_layers=4, sensor_heads=8, sensor_ff=1024,
        fusion_dim=512, fusion_tokens=4, fusion_heads=8, fusion_dropout=0.1, mlp_hidden=1024, embed_dim=512,
        photo_aggregation="mean", freeze_backbones=True,
    )
    train = TrainConfig()
    preprocess = PreprocessParams(video_frames=32, video_size=224, num_photos=5, photo_size=224,
                                  audio_mel_bins=128, audio_frames=256, sensor_steps=256)
    return WeldConfig(name="full", model=model, train=train, preprocess=preprocess)


CONFIGS = {"small": small, "full": full}


def load_config(name: str) -> WeldConfig:
    """A fresh copy of the preset `name` (small, full)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]()
