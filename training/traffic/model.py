"""The alternating spatio-temporal forecaster, with every variant of the research log as a config switch.

Layout: input `x` is `(B, T_in, N, C)` (C = scaled speed, then time-of-day, then day-of-week when enabled);
output is `(B, T_out, N, 1)` in mph (the scaler travels as buffers so the exported graph speaks mph).
Internally features are `(B, N, T, D)`.

```
Embed -> [Stage k: (multi-scale patches) -> Temporal enc. -> Spatial enc. -> Fusion -> (cross-stage attn)]
         -> Decoder k (temporal + spatial component) -> next stage ... -> output projection
```
- Phase 1 ("fixed two-stage alternating"): num_stages=2, patch_sizes=[1], no cross-stage attention, no deep
  supervision.
- Phase 2 switches (default off): `share_stage_params`, `skip_connections` ("add" | "concat", gated),
  `spatial_encoding="batched"` (one attention over all N*T tokens instead of per-time-step over N).
- Phase 3: `num_stages` 2-5, `patch_sizes`, `cross_stage_attention` (scope "full" = the log's
  (B, N*T, D) queries over all earlier stages' tokens; "node" = the same per sensor, O(T^2) instead of
  O((N*T)^2), for CPU-sized runs), `deep_supervision` (one loss per stage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SkipMode = Literal["none", "add", "concat"]
SpatialMode = Literal["stepwise", "batched"]
CrossScope = Literal["full", "node"]


@dataclass
class TrafficModelConfig:
    num_nodes: int
    in_steps: int = 12
    out_steps: int = 12
    use_time_of_day: bool = True
    use_day_of_week: bool = False
    steps_per_day: int = 288
    d_model: int = 64
    num_heads: int = 4
    ffn_mult: int = 4
    temporal_layers: int = 1
    spatial_layers: int = 1
    dropout: float = 0.1
    adjacency_bias: bool = True
    # Phase 3
    num_stages: int = 2
    patch_sizes: list[int] = field(default_factory=lambda: [1])
    cross_stage_attention: bool = False
    cross_stage_scope: CrossScope = "full"
    deep_supervision: bool = False
    # Forecast the change from each sensor's last observed reading (the last-value baseline is the
    # starting point) instead of the absolute speed; off in the research presets, on for short CPU runs.
    predict_residual: bool = False
    # Phase 2 (failed; kept reproducible)
    share_stage_params: bool = False
    skip_connections: SkipMode = "none"
    spatial_encoding: SpatialMode = "stepwise"

    def __post_init__(self) -> None:
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must be in 1..8, got {self.num_stages}")
        if not self.patch_sizes or any(p < 1 for p in self.patch_sizes):
            raise ValueError(f"patch_sizes must be positive integers, got {self.patch_sizes}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if self.skip_connections not in ("none", "add", "concat"):
            raise ValueError(f"skip_connections must be none|add|concat, got {self.skip_connections!r}")
        if self.spatial_encoding not in ("stepwise", "batched"):
            raise ValueError(f"spatial_encoding must be stepwise|batched, got {self.spatial_encoding!r}")
        if self.cross_stage_scope not in ("full", "node"):
            raise ValueError(f"cross_stage_scope must be full|node, got {self.cross_stage_scope!r}")
        if self.skip_connections != "none" and self.in_steps != self.out_steps:
            raise ValueError("skip connections need in_steps == out_steps (stage outputs are added)")

    @property
    def input_dim(self) -> int:
        return 1 + int(self.use_time_of_day) + int(self.use_day_of_week)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrafficModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class Attention(nn.Module):
    """Multi-head attention with an optional additive bias (fused SDPA kernel; exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # query (S, L, D), memory (S, M, D), bias broadcastable to (S, H, L, M)
        s, length, dim = query.shape
        q = self.q(query).reshape(s, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(memory).reshape(s, -1, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(memory).reshape(s, -1, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(s, length, dim))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + feed-forward block."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * ffn_mult, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class TemporalEncoder(nn.Module):
    """Attention over the T axis, independently for every node."""

    def __init__(self, cfg: TrafficModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.temporal_layers)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, t, d = h.shape
        x = h.reshape(-1, t, d)
        for layer in self.layers:
            x = layer(x)
        return x.reshape(-1, n, t, d)


class SpatialEncoder(nn.Module):
    """Attention over the N axis for every time step ("stepwise"), with the road graph as an additive bias.

    "batched" (Phase 2's failed variant) attends over all N*T tokens at once, which mixes the time steps
    that the temporal encoder kept apart.
    """

    def __init__(self, cfg: TrafficModelConfig) -> None:
        super().__init__()
        self.mode = cfg.spatial_encoding
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.spatial_layers)
        )
        # One learned weight per head and layer on the adjacency bias (0 -> plain attention at init + learnable).
        self.adj_weight = nn.Parameter(torch.ones(cfg.spatial_layers, cfg.num_heads)) if cfg.adjacency_bias else None

    def _bias(self, index: int, adjacency: torch.Tensor, t: int) -> torch.Tensor | None:
        if self.adj_weight is None:
            return None
        adj = adjacency
        if self.mode == "batched":  # token n*T + t attends to m*T + s with weight A[n, m]
            adj = adj.repeat_interleave(t, dim=0).repeat_interleave(t, dim=1)
        return self.adj_weight[index].reshape(1, -1, 1, 1) * adj

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        b, n, t, d = h.shape
        if self.mode == "batched":
            x = h.reshape(-1, n * t, d)
            for i, layer in enumerate(self.layers):
                x = layer(x, self._bias(i, adjacency, t))
            return x.reshape(-1, n, t, d)
        x = h.transpose(1, 2).reshape(-1, n, d)
        for i, layer in enumerate(self.layers):
            x = layer(x, self._bias(i, adjacency, t))
        return x.reshape(-1, t, n, d).transpose(1, 2)


class Fusion(nn.Module):
    """Gated mix of the temporal and spatial views."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, temporal: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([temporal, spatial], dim=-1)))
        return self.norm(z * temporal + (1 - z) * spatial)


def linear_upsampling(chunks: int, steps: int) -> torch.Tensor:
    """(steps, chunks) matrix W with W @ y == F.interpolate(y, steps, mode="linear", align_corners=False)
    along the time axis. A matmul instead of interpolate: CUDA's upsample_linear1d backward is atomics-bound
    and took ~75% of Phase 3 quick's step time on an H100 (1.5 s per batch of 32 at N=207)."""
    identity = torch.eye(chunks).unsqueeze(0)  # row c = the signal that is 1 at position c
    return F.interpolate(identity, size=steps, mode="linear", align_corners=False)[0].T.contiguous()


class MultiScalePatches(nn.Module):
    """(B, N, T, D) -> per scale p: (B, N, T/p, D*p) -> Linear to D -> interpolate back to T; concat -> fuse."""

    def __init__(self, dim: int, patch_sizes: list[int], steps: int) -> None:
        super().__init__()
        self.patch_sizes = list(patch_sizes)
        self.steps = steps
        self.proj = nn.ModuleList(nn.Linear(dim * p, dim) for p in self.patch_sizes)
        self.fuse = nn.Linear(dim * len(self.patch_sizes), dim)
        self.norm = nn.LayerNorm(dim)
        for p in self.patch_sizes:  # scales coarser than T are upsampled back; not saved: derived from config
            if -(-steps // p) != steps:
                self.register_buffer(f"upsample_{p}", linear_upsampling(-(-steps // p), steps), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, d = h.shape[1], h.shape[3]
        t = self.steps  # static, so the padding/interpolation branches are fixed in the exported graph
        scales = []
        for p, proj in zip(self.patch_sizes, self.proj, strict=True):
            x = h
            pad = (-t) % p
            if pad:  # left-pad by repeating the oldest step so the newest steps stay aligned
                x = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1), x], dim=2)
            chunks = (t + pad) // p
            y = proj(x.reshape(-1, n, chunks, d * p))
            if chunks != t:
                y = getattr(self, f"upsample_{p}") @ y  # (T, chunks) @ (B, N, chunks, D)
            scales.append(y)
        return self.norm(h + self.fuse(torch.cat(scales, dim=-1)))


class StageEncoder(nn.Module):
    """One stage: (multi-scale patches) -> temporal -> spatial -> fusion."""

    def __init__(self, cfg: TrafficModelConfig, steps: int) -> None:
        super().__init__()
        use_patches = list(cfg.patch_sizes) != [1]
        self.patches = MultiScalePatches(cfg.d_model, cfg.patch_sizes, steps) if use_patches else None
        self.temporal = TemporalEncoder(cfg)
        self.spatial = SpatialEncoder(cfg)
        self.fusion = Fusion(cfg.d_model)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        if self.patches is not None:
            h = self.patches(h)
        temporal = self.temporal(h)
        spatial = self.spatial(temporal, adjacency)
        return self.fusion(temporal, spatial)


class StageDecoder(nn.Module):
    """Split into a temporal component (history steps -> horizon steps) and a spatial component (one step of
    graph diffusion + node-wise projection); their sum is the next stage's input."""

    def __init__(self, cfg: TrafficModelConfig, steps_in: int) -> None:
        super().__init__()
        self.time = nn.Linear(steps_in, cfg.out_steps)
        self.space = nn.Linear(cfg.d_model, cfg.d_model)
        self.position = nn.Parameter(torch.zeros(cfg.out_steps, cfg.d_model))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, h: torch.Tensor, diffusion: torch.Tensor) -> torch.Tensor:
        b, n, t, d = h.shape
        temporal = self.time(h.transpose(2, 3)).transpose(2, 3)  # (B, N, T_out, D)
        t_out = temporal.shape[2]
        spread = (diffusion @ temporal.reshape(-1, n, t_out * d)).reshape(-1, n, t_out, d)
        return self.norm(temporal + self.space(spread)) + self.position


class CrossStageAttention(nn.Module):
    """Stage k's tokens query the concatenated outputs of all earlier stages."""

    def __init__(self, cfg: TrafficModelConfig) -> None:
        super().__init__()
        self.scope = cfg.cross_stage_scope
        self.norm_q = nn.LayerNorm(cfg.d_model)
        self.norm_kv = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.dropout)

    def forward(self, h: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
        b, n, t, d = h.shape
        if self.scope == "full":  # (B, N*T, D) queries, (B, (k-1)*N*T, D) keys/values
            q = h.reshape(-1, n * t, d)
            kv = torch.cat([m.reshape(-1, n * m.shape[2], d) for m in earlier], dim=1)
        else:  # per node: (B*N, T, D) queries over that node's earlier-stage tokens
            q = h.reshape(-1, t, d)
            kv = torch.cat([m.reshape(-1, m.shape[2], d) for m in earlier], dim=1)
        out = self.attn(self.norm_q(q), self.norm_kv(kv))
        return h + out.reshape(-1, n, t, d)


class SkipFusion(nn.Module):
    """Phase 2's multi-level skip connections into a stage's input, gated ("add" or "concat")."""

    def __init__(self, cfg: TrafficModelConfig, num_earlier: int) -> None:
        super().__init__()
        self.mode = cfg.skip_connections
        d = cfg.d_model
        if self.mode == "add":
            self.gates = nn.Parameter(torch.zeros(num_earlier))
        else:
            self.proj = nn.Linear(d * (num_earlier + 1), d)
            self.gate = nn.Linear(d * (num_earlier + 1), d)

    def forward(self, h: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "add":
            for gate, skip in zip(torch.sigmoid(self.gates), earlier, strict=True):
                h = h + gate * skip
            return h
        cat = torch.cat([h, *earlier], dim=-1)
        return h + torch.sigmoid(self.gate(cat)) * self.proj(cat)


class TrafficForecaster(nn.Module):
    def __init__(
        self,
        cfg: TrafficModelConfig,
        adjacency: np.ndarray | torch.Tensor | None = None,
        scaler_mean: float = 0.0,
        scaler_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        n, d = cfg.num_nodes, cfg.d_model
        adj = torch.eye(n) if adjacency is None else torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
        if adj.shape != (n, n):
            raise ValueError(f"adjacency shape {tuple(adj.shape)} does not match num_nodes={n}")
        self.register_buffer("adjacency", adj.clone())
        with_self = adj + torch.eye(n)
        self.register_buffer("diffusion", with_self / with_self.sum(dim=1, keepdim=True).clamp_min(1e-6))
        self.register_buffer("out_mean", torch.tensor(float(scaler_mean)))
        self.register_buffer("out_std", torch.tensor(float(scaler_std)))

        # Embedding: speed value + time-of-day/day-of-week slots + node identity + step position.
        self.value = nn.Linear(1, d)
        self.tod = nn.Embedding(cfg.steps_per_day, d) if cfg.use_time_of_day else None
        self.dow = nn.Embedding(7, d) if cfg.use_day_of_week else None
        self.node = nn.Parameter(torch.randn(n, d) * 0.02)
        self.position = nn.Parameter(torch.zeros(cfg.in_steps, d))

        k = cfg.num_stages
        steps = [cfg.in_steps] + [cfg.out_steps] * (k - 1)
        if cfg.share_stage_params:
            shared = StageEncoder(cfg, cfg.in_steps)
            self.stages = nn.ModuleList([shared] * k)
        else:
            self.stages = nn.ModuleList(StageEncoder(cfg, s) for s in steps)
        self.decoders = nn.ModuleList(StageDecoder(cfg, steps[i]) for i in range(k - 1))
        # The last stage's features are already on the horizon axis unless there is a single stage.
        self.final_time = nn.Linear(cfg.in_steps, cfg.out_steps) if k == 1 else None
        self.cross = (
            nn.ModuleList(CrossStageAttention(cfg) for _ in range(k - 1)) if cfg.cross_stage_attention else None
        )
        self.skips = (
            nn.ModuleList(SkipFusion(cfg, i + 1) for i in range(k - 1)) if cfg.skip_connections != "none" else None
        )
        self.head = nn.Linear(d, 1)
        self.aux_heads = nn.ModuleList(nn.Linear(d, 1) for _ in range(k - 1)) if cfg.deep_supervision else None
        if cfg.predict_residual:  # start exactly at the last-value forecast; training learns the corrections
            for head in [self.head, *(self.aux_heads or [])]:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, T, N, C) -> (B, N, T, D)
        x = x.transpose(1, 2)
        h = self.value(x[..., :1]) + self.node.unsqueeze(1) + self.position
        channel = 1
        if self.tod is not None:
            slot = torch.floor(x[..., channel] * self.cfg.steps_per_day + 1e-3).long()
            h = h + self.tod(slot.clamp(0, self.cfg.steps_per_day - 1))
            channel += 1
        if self.dow is not None:
            day = torch.floor(x[..., channel] * 7 + 1e-3).long()
            h = h + self.dow(day.clamp(0, 6))
        return h

    def last_observed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, 1) mph: each sensor's most recent non-missing input (0 = missing), else the scaler mean."""
        raw = x[..., :1] * self.out_std + self.out_mean
        base = torch.zeros_like(raw[:, :1]) + self.out_mean
        for t in range(raw.shape[1]):  # unrolled: 12 `where`s, plain in ONNX
            step = raw[:, t : t + 1]
            base = torch.where(step.abs() > 0.5, step, base)
        return base

    def _project(self, head: nn.Linear, h: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        y = head(h).transpose(1, 2) * self.out_std  # (B, T_out, N, 1) mph
        return y + (self.out_mean if base is None else base)

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Predictions of every supervised stage (deep supervision), the final one last; mph."""
        return self._run(x, with_aux=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, with_aux=False)[-1]

    def _run(self, x: torch.Tensor, with_aux: bool) -> list[torch.Tensor]:
        h = self.embed(x)
        base = self.last_observed(x) if self.cfg.predict_residual else None
        earlier: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        last = len(self.stages) - 1
        for k, stage in enumerate(self.stages):
            if k > 0 and self.skips is not None:
                h = self.skips[k - 1](h, earlier)
            h = stage(h, self.adjacency)
            if k > 0 and self.cross is not None:
                h = self.cross[k - 1](h, earlier)
            earlier.append(h)
            if k < last:
                h = self.decoders[k](h, self.diffusion)
                if with_aux and self.aux_heads is not None:
                    outputs.append(self._project(self.aux_heads[k], h, base))
        if self.final_time is not None:
            h = self.final_time(h.transpose(2, 3)).transpose(2, 3)
        outputs.append(self._project(self.head, h, base))
        return outputs


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, shared modules counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
