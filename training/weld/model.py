"""The four-modality weld embedding model.

video  (B, T, 3, S, S) -> V-JEPA 2 encoder  -> patch tokens  (B, Nv, Dv)
photos (B, P, 3, S, S) -> DINOv2 per photo  -> CLS per angle (B, P, Dp) -> tokens | mean | max | concat
audio  (B, L, M)       -> AST               -> patch tokens  (B, Na, Da)
sensors(B, N, 6)       -> sensor Transformer (from scratch) -> tokens (B, N + 1, Ds)

CrossAttentionFusionModule: each modality projected to `fusion_dim`; `fusion_tokens` learnable queries
cross-attend to each modality (8 heads, dropout, residual + LayerNorm; an absent modality, per the optional
presence mask, adds nothing) -> concat (B, 4*T, F) -> flatten ->
MLP -> output projection -> LayerNorm -> L2 normalisation.

Attention is written out (matmul + softmax) rather than with nn.MultiheadAttention so that the attention
maps can be returned and ONNX export never meets a fused fast path.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ASTConfig, ASTModel, Dinov2Config, Dinov2Model, VJEPA2Config, VJEPA2Model

from families.weld.preprocessing import PreprocessParams
from training.weld.config import ModelConfig


def _load_or_build(model_cls, config_cls, kwargs: dict, pretrained: str | None,
                   overrides: tuple[str, ...] = ()) -> nn.Module:
    if pretrained:
        path = Path(pretrained)
        if not path.is_dir():
            raise FileNotFoundError(f"pretrained encoder directory {path} does not exist (hubs are never used)")
        # Parameter-free geometry (e.g. V-JEPA 2's crop_size for RoPE) follows our config, weights the dir.
        extra = {key: kwargs[key] for key in overrides if key in kwargs}
        return model_cls.from_pretrained(str(path), local_files_only=True, **extra)
    return model_cls(config_cls(**kwargs))


class VideoEncoder(nn.Module):
    def __init__(self, kwargs: dict, pretrained: str | None) -> None:
        super().__init__()
        self.backbone = _load_or_build(VJEPA2Model, VJEPA2Config, kwargs, pretrained, ("crop_size",))
        self.out_dim = self.backbone.config.hidden_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values_videos=video, skip_predictor=True).last_hidden_state


class PhotoEncoder(nn.Module):
    def __init__(self, kwargs: dict, pretrained: str | None, aggregation: str, num_photos: int) -> None:
        super().__init__()
        if aggregation not in ("tokens", "mean", "max", "concat"):
            raise ValueError(f"photo_aggregation must be tokens|mean|max|concat, got {aggregation!r}")
        self.backbone = _load_or_build(Dinov2Model, Dinov2Config, kwargs, pretrained)
        self.aggregation = aggregation
        hidden = self.backbone.config.hidden_size
        self.out_dim = hidden * num_photos if aggregation == "concat" else hidden

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        b, p = photos.shape[:2]
        cls = self.backbone(pixel_values=photos.flatten(0, 1)).pooler_output.view(b, p, -1)
        if self.aggregation == "tokens":
            return cls
        if self.aggregation == "mean":
            return cls.mean(dim=1, keepdim=True)
        if self.aggregation == "max":
            return cls.amax(dim=1, keepdim=True)
        return cls.reshape(b, 1, -1)


class AudioEncoder(nn.Module):
    def __init__(self, kwargs: dict, pretrained: str | None) -> None:
        super().__init__()
        self.backbone = _load_or_build(ASTModel, ASTConfig, kwargs, pretrained)
        self.out_dim = self.backbone.config.hidden_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_values=audio).last_hidden_state  # (B, 2 + patches, D)


class Attention(nn.Module):
    """Multi-head attention from queries (B, Q, D) to keys/values (B, K, D); returns output and maps."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5  # a Python float: no shape arithmetic in the traced graph
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq, d = query.shape
        h, hd = self.heads, self.head_dim
        q = self.q(query).view(b, nq, h, hd).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (self.drop(attn) @ v).transpose(1, 2).reshape(b, nq, d)
        return self.out(out), attn


class SensorEncoder(nn.Module):
    """Small pre-norm Transformer over the resampled sensor time series, trained from scratch."""

    def __init__(self, channels: int, steps: int, dim: int, layers: int, heads: int, ff: int, dropout: float,
                 patch: int = 1) -> None:
        super().__init__()
        if steps % patch:
            raise ValueError(f"sensor steps {steps} is not a multiple of the patch length {patch}")
        self.patch = patch
        # Non-overlapping patches of `patch` steps x channels -> one token (attention cost / patch^2).
        self.inp = nn.Linear(channels * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, steps // patch + 1, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "attn": Attention(dim, heads, dropout),
                "norm2": nn.LayerNorm(dim),
                "mlp": nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, dim)),
            }))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, sensors: torch.Tensor) -> torch.Tensor:
        b, n, c = sensors.shape
        x = self.inp(sensors.reshape(b, n // self.patch, self.patch * c))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            y = block["norm1"](x)
            x = x + block["attn"](y, y)[0]
            x = x + block["mlp"](block["norm2"](x))
        return self.norm(x)


class CrossAttentionFusionModule(nn.Module):
    def __init__(self, in_dims: dict[str, int], dim: int, tokens: int, heads: int, dropout: float,
                 mlp_hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.fusion_tokens = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.cross = nn.ModuleDict({m: Attention(dim, heads, dropout) for m in in_dims})
        self.norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in in_dims})
        self.drop = nn.Dropout(dropout)
        flat = len(in_dims) * tokens * dim
        self.mlp = nn.Sequential(nn.Linear(flat, mlp_hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_hidden, embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.out_norm = nn.LayerNorm(embed_dim)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """`mask` (B, modalities) presence, 1 = present (bool or 0/1 float; None = all present): an absent
        modality's tokens are dropped, as if every one of its keys were padding. Its cross-attention adds
        nothing, so its fusion tokens are the learned queries alone and its input values have no effect."""
        b = next(iter(features.values())).shape[0]
        queries = self.fusion_tokens.expand(b, -1, -1)
        present = None if mask is None else mask.to(queries.dtype)
        fused, maps = [], {}
        for i, m in enumerate(self.modalities):
            context = self.proj[m](features[m])
            attended, attn = self.cross[m](queries, context)
            if present is not None:
                keep = present[:, i, None, None]
                attended, attn = attended * keep, attn * keep[..., None]
            fused.append(self.norms[m](queries + self.drop(attended)))
            maps[m] = attn
        x = torch.cat(fused, dim=1).flatten(1)
        x = self.out_norm(self.out_proj(self.mlp(x)))
        embedding = F.normalize(x, dim=-1)
        return (embedding, maps) if return_attention else embedding


class WeldEmbeddingModel(nn.Module):
    """(video, photos, audio, sensors) -> L2-normalised embedding (B, embed_dim)."""

    def __init__(self, config: ModelConfig, preprocess: PreprocessParams, num_classes: int = 12) -> None:
        super().__init__()
        self.config = config
        self.video = VideoEncoder(config.video_encoder, config.video_pretrained)
        self.photos = PhotoEncoder(config.photo_encoder, config.photo_pretrained, config.photo_aggregation,
                                   preprocess.num_photos)
        self.audio = AudioEncoder(config.audio_encoder, config.audio_pretrained)
        self.sensors = SensorEncoder(6, preprocess.sensor_steps, config.sensor_dim, config.sensor_layers,
                                     config.sensor_heads, config.sensor_ff, config.fusion_dropout,
                                     config.sensor_patch)
        dims = {"video": self.video.out_dim, "photos": self.photos.out_dim, "audio": self.audio.out_dim,
                "sensors": self.sensors.out_dim}
        self.fusion = CrossAttentionFusionModule(dims, config.fusion_dim, config.fusion_tokens, config.fusion_heads,
                                                 config.fusion_dropout, config.mlp_hidden, config.embed_dim)
        # Training-only head for the optional SupCon + CE mix; not part of the exported graph.
        self.classifier = nn.Linear(config.embed_dim, num_classes)
        check_encoder_geometry(self, preprocess)
        if config.freeze_backbones:
            self.freeze_backbones()

    def backbones(self) -> list[nn.Module]:
        return [self.video.backbone, self.photos.backbone, self.audio.backbone]

    def freeze_backbones(self) -> None:
        for module in self.backbones():
            module.requires_grad_(False)
            module.eval()
        self._frozen = True

    def unfreeze_backbones(self) -> None:
        """Staged fine-tuning: make the three pretrained backbones trainable again."""
        for module in self.backbones():
            module.requires_grad_(True)
        self._frozen = False
        self.train(self.training)

    def train(self, mode: bool = True) -> WeldEmbeddingModel:
        super().train(mode)
        if getattr(self, "_frozen", False):
            for module in self.backbones():
                module.eval()  # frozen backbones keep dropout off even in training mode
        return self

    def features(self, video, photos, audio, sensors) -> dict[str, torch.Tensor]:
        return {"video": self.video(video), "photos": self.photos(photos), "audio": self.audio(audio),
                "sensors": self.sensors(sensors)}

    def forward(self, video, photos, audio, sensors, mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """`mask`: (B, 4) modality presence in MODALITIES order (see CrossAttentionFusionModule.forward)."""
        return self.fusion(self.features(video, photos, audio, sensors), mask=mask,
                           return_attention=return_attention)


def check_encoder_geometry(model: WeldEmbeddingModel, preprocess: PreprocessParams) -> None:
    """Catch the silent mismatches between preprocessing and the encoder configs (see the spec's pitfalls)."""
    video_cfg = model.video.backbone.config
    if video_cfg.crop_size != preprocess.video_size:
        raise ValueError(f"V-JEPA 2 crop_size={video_cfg.crop_size} but frames are {preprocess.video_size} px: "
                         "its RoPE grid is crop_size // patch_size, so every token would get a wrong position")
    if preprocess.video_frames % video_cfg.tubelet_size:
        raise ValueError(f"video_frames={preprocess.video_frames} is not a multiple of tubelet_size "
                         f"{video_cfg.tubelet_size}")
    photo_cfg = model.photos.backbone.config
    if photo_cfg.image_size != preprocess.photo_size:
        raise ValueError(f"DINOv2 image_size={photo_cfg.image_size} but photos are {preprocess.photo_size} px")
    audio_cfg = model.audio.backbone.config
    if audio_cfg.num_mel_bins != preprocess.audio_mel_bins or audio_cfg.max_length != preprocess.audio_frames:
        raise ValueError(f"AST expects (max_length={audio_cfg.max_length}, mel={audio_cfg.num_mel_bins}) but "
                         f"audio features are ({preprocess.audio_frames}, {preprocess.audio_mel_bins})")


def build_model(config, seed: int | None = None) -> WeldEmbeddingModel:
    """Build from a WeldConfig (fixed seed -> identical initial weights)."""
    if seed is not None:
        torch.manual_seed(seed)
    return WeldEmbeddingModel(config.model, config.preprocess)


class EmbeddingGraph(nn.Module):
    """Export wrapper: four named inputs -> embedding (no classifier head, no attention maps)."""

    def __init__(self, model: WeldEmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, video, photos, audio, sensors):
        return self.model(video, photos, audio, sensors)


class MaskedEmbeddingGraph(nn.Module):
    """Export wrapper of a version with optional modalities: the four inputs and the (B, 4) float presence mask
    (`families.weld.contract.MASK_INPUT`, 1 = present, MODALITIES order) -> embedding."""

    def __init__(self, model: WeldEmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, video, photos, audio, sensors, modality_mask):
        return self.model(video, photos, audio, sensors, mask=modality_mask)
