"""Five-modality hydrology MAE with CrossMAE decoders (spec: shared/specs/water.md).

Token layout: an image modality [B, T, H, W] becomes T*Hp*Wp tokens of p*p values (order t, row, col);
a vector modality [B, T_v] becomes T_v tokens of one value. Encoders see only the visible tokens, given as
index tensors `idx` [B, L] plus `pad` [B, L] (True = padding), so visible counts may differ per sample.
Passing `idx=None` means "all N positions" with `pad` = hidden; attention then ignores hidden tokens
exactly as if they had been removed (used by the exported graph, which takes full fields plus masks).
With `prior_fill`, the token values at hidden positions are not ignored: they hold the gap-filling prior
(families.water.preprocessing.gap_prior), which the decoders embed at their queries and correct.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES
from training.water.config import WaterModelConfig

NEG = -1e9  # additive attention bias for ignored keys (finite, so an all-ignored row cannot make NaNs)


def key_bias(pad: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[B, Lk] padding mask -> additive bias [B, 1, 1, Lk]."""
    if pad is None:
        return None
    return (pad.to(dtype) * NEG)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention; keys/values come from one `kv` linear projection of the context."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, bias: Tensor | None) -> Tensor:
        b, lq, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, lq, d))


def mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block (self-attention + MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, bias)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """CrossMAE decoder block: optional self-attention among queries -> cross-attention -> MLP."""

    def __init__(self, dim: int, context_dim: int, heads: int, mlp_ratio: float, self_attn: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads) if self_attn else None
        self.norm_sa = nn.LayerNorm(dim) if self_attn else None
        self.norm_q = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, context_dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, memory: Tensor, memory_bias: Tensor | None, query_bias: Tensor | None) -> Tensor:
        if self.self_attn is not None and self.norm_sa is not None:
            h = self.norm_sa(x)
            x = x + self.self_attn(h, h, query_bias)
        x = x + self.cross(self.norm_q(x), memory, memory_bias)
        return x + self.mlp(self.norm_mlp(x))


class PositionTable(nn.Module):
    """Learned positional embedding for every token position: factorised (t + row + col) for images."""

    def __init__(self, cfg: WaterModelConfig, image: bool, dim: int) -> None:
        super().__init__()
        self.image = image
        if image:
            hp, wp = cfg.grid_patches
            self.t = nn.Parameter(torch.randn(cfg.frames, dim) * 0.02)
            self.r = nn.Parameter(torch.randn(hp, dim) * 0.02)
            self.c = nn.Parameter(torch.randn(wp, dim) * 0.02)
        else:
            self.t = nn.Parameter(torch.randn(cfg.series_len, dim) * 0.02)

    def forward(self) -> Tensor:
        """[N, dim]"""
        if not self.image:
            return self.t
        table = self.t[:, None, None, :] + self.r[None, :, None, :] + self.c[None, None, :, :]
        return table.reshape(-1, table.shape[-1])


def take(x: Tensor, idx: Tensor | None) -> Tensor:
    """x [B, N, C] at positions idx [B, L] -> [B, L, C] (idx None = all positions)."""
    if idx is None:
        return x
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


def take_table(table: Tensor, idx: Tensor | None, batch: int) -> Tensor:
    """table [N, C] at idx [B, L] -> [B, L, C]."""
    if idx is None:
        return table[None].expand(batch, -1, -1)
    return table[idx]


class Encoder(nn.Module):
    """Transformer over the visible tokens of one modality; vector encoders add a static-attribute token."""

    def __init__(self, cfg: WaterModelConfig, modality: str) -> None:
        super().__init__()
        self.image = modality in IMAGE_MODALITIES
        token_dim = cfg.patch**2 if self.image else 1
        depth = cfg.image_layers if self.image else cfg.vector_layers
        self.embed = nn.Linear(token_dim, cfg.d_model)
        self.pos = PositionTable(cfg, self.image, cfg.d_model)
        self.static_embed = None if self.image else nn.Linear(cfg.n_static, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.heads, cfg.mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(cfg.d_model)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, tokens: Tensor, static: Tensor, idx: Tensor | None,
                pad: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Returns (the input embedding and every layer output, final normed output, padding mask)."""
        x = self.embed(take(tokens, idx)) + take_table(self.pos(), idx, tokens.shape[0])
        if self.static_embed is not None:
            x = torch.cat([self.static_embed(static)[:, None, :], x], dim=1)
            pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # the static token is never padding
        bias = key_bias(pad, x.dtype)
        layers = [x]
        for block in self.blocks:
            x = block(x, bias)
            layers.append(x)
        return layers, self.norm(x), pad


class WeightedFeatureMaps(nn.Module):
    """Bias-free Linear(k -> decoder_depth) over stacked encoder layers; one LayerNorm per decoder block."""

    def __init__(self, k: int, decoder_depth: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(k, decoder_depth, bias=False)
        with torch.no_grad():  # start as "last layer only", i.e. the plain decoder's memory
            self.linear.weight.zero_()
            self.linear.weight[:, -1] = 1.0
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(decoder_depth))

    def forward(self, layers: list[Tensor]) -> list[Tensor]:
        stacked = torch.stack(layers, dim=-1)  # [B, L, C, k]
        mixed = self.linear(stacked)  # [B, L, C, depth]
        return [norm(mixed[..., i]) for i, norm in enumerate(self.norms)]


class CrossDecoder(nn.Module):
    """CrossMAE decoder of one modality: mask-token queries at the requested positions."""

    def __init__(self, cfg: WaterModelConfig, modality: str) -> None:
        super().__init__()
        image = modality in IMAGE_MODALITIES
        dd = cfg.decoder_dim
        self.mask_token = nn.Parameter(torch.zeros(dd))
        nn.init.normal_(self.mask_token, std=0.02)
        self.pos = PositionTable(cfg, image, dd)
        self.blocks = nn.ModuleList(
            CrossBlock(dd, cfg.d_model, cfg.decoder_heads, cfg.decoder_mlp_ratio, cfg.decoder_self_attn)
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dd)
        self.head = nn.Linear(dd, cfg.patch**2 if image else 1)
        self.prior_embed = nn.Linear(cfg.patch**2 if image else 1, dd) if cfg.prior_fill else None
        self.context_embed = nn.Linear(IMAGE_CONTEXT if image else VECTOR_CONTEXT, dd) if cfg.prior_fill else None
        if cfg.prior_fill:
            zero_head(self.head)

    def forward(self, memories: list[Tensor], memory_bias: Tensor, q_idx: Tensor | None, q_pad: Tensor,
                batch: int, prior: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """prior [B, Lq, P]: the gap-filling prior at the queries (prior_fill), context [B, Lq, F] its
        mask_context; the output corrects the prior."""
        x = self.mask_token + take_table(self.pos(), q_idx, batch)
        if self.prior_embed is not None and self.context_embed is not None and prior is not None:
            x = x + self.prior_embed(prior)
            if context is not None:
                x = x + self.context_embed(context)
        query_bias = key_bias(q_pad, x.dtype)
        for block, memory in zip(self.blocks, memories, strict=True):
            x = block(x, memory, memory_bias, query_bias)
        out = self.head(self.norm(x))
        return out if prior is None else prior + out


IMAGE_CONTEXT, VECTOR_CONTEXT = 9, 7  # features of mask_context per token


def shifted(x: Tensor, dim: int, step: int) -> Tensor:
    """x moved by `step` along dim (x[i - step]), zeros (= not visible) shifted in."""
    n = x.shape[dim]
    pad = torch.zeros_like(x.narrow(dim, 0, abs(step)))
    if step > 0:
        return torch.cat([pad, x.narrow(dim, 0, n - step)], dim=dim)
    return torch.cat([x.narrow(dim, -step, n + step), pad], dim=dim)


def mask_context(cfg: WaterModelConfig, visible: Tensor, image: bool) -> Tensor:
    """Per-token features of the visibility pattern around each token [B, N, F]: whether the same place is
    visible 1-2 steps before/after, whether the spatial neighbours of the same frame are, and the visible
    fraction of the frame / series. They tell a decoder how the gap-filling prior was made (interpolated
    between close days, copied from a neighbour, or the mean) and so how much to trust it."""
    b = visible.shape[0]
    if image:
        hp, wp = cfg.grid_patches
        v = visible.reshape(b, cfg.frames, hp, wp)
        frame = v.mean(dim=(2, 3), keepdim=True).expand_as(v)
        feats = [shifted(v, 1, s) for s in (1, -1, 2, -2)] + [shifted(v, d, s) for d in (2, 3) for s in (1, -1)]
        return torch.stack(feats + [frame], dim=-1).reshape(b, -1, IMAGE_CONTEXT)
    series = visible.mean(dim=1, keepdim=True).expand_as(visible)
    feats = [shifted(visible, 1, s) for s in (1, -1, 2, -2, 3, -3)]
    return torch.stack(feats + [series], dim=-1)


def zero_head(head: nn.Linear) -> None:
    """A residual head starts at zero: the untrained model returns the prior unchanged."""
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)


class PooledDecoder(nn.Module):
    """The old design (baseline): self-attention over all N positions of the modality (visible tokens
    projected from the encoder, mask tokens elsewhere) plus one pooled context token per modality."""

    def __init__(self, cfg: WaterModelConfig, modality: str) -> None:
        super().__init__()
        image = modality in IMAGE_MODALITIES
        dd = cfg.decoder_dim
        self.n = cfg.tokens(modality)
        self.embed = nn.Linear(cfg.d_model, dd)
        self.mask_token = nn.Parameter(torch.randn(dd) * 0.02)
        self.pos = PositionTable(cfg, image, dd)
        self.blocks = nn.ModuleList(Block(dd, cfg.decoder_heads, cfg.decoder_mlp_ratio)
                                    for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(dd)
        self.head = nn.Linear(dd, cfg.patch**2 if image else 1)
        if cfg.prior_fill:  # residual on the prior only (the old design has no per-query embedding of it)
            zero_head(self.head)

    def forward(self, own: Tensor, idx: Tensor | None, pad: Tensor, pooled: Tensor) -> Tensor:
        """own: this modality's encoder output at idx (static token removed); pooled: [B, M, d_model]."""
        b = own.shape[0]
        values = self.embed(own)
        if idx is None:  # dense: own covers all N positions, pad = hidden
            full = torch.where(pad[:, :, None], self.mask_token.expand(b, self.n, -1), values)
        else:  # scatter visible tokens into a mask-token canvas; padding goes to a dropped extra slot
            canvas = self.mask_token.expand(b, self.n + 1, -1).clone()
            target = torch.where(pad, torch.full_like(idx, self.n), idx)
            full = canvas.scatter(1, target[:, :, None].expand(-1, -1, values.shape[-1]), values)[:, : self.n]
        x = torch.cat([self.embed(pooled), full + self.pos()], dim=1)
        for block in self.blocks:
            x = block(x, None)
        return self.head(self.norm(x[:, pooled.shape[1]:]))  # [B, N, P]


class WaterMAE(nn.Module):
    def __init__(self, cfg: WaterModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({m: Encoder(cfg, m) for m in MODALITIES})
        self.modality_emb = nn.Parameter(torch.randn(len(MODALITIES), cfg.d_model) * 0.02)
        decoder = CrossDecoder if cfg.use_cross_attn else PooledDecoder
        self.decoders = nn.ModuleDict({m: decoder(cfg, m) for m in MODALITIES})
        self.wfm = None
        if cfg.use_cross_attn and cfg.use_weighted_fm:
            self.wfm = nn.ModuleDict({m: WeightedFeatureMaps(len(self.fm_layers(m)), cfg.decoder_depth, cfg.d_model)
                                      for m in MODALITIES})

    def fm_layers(self, modality: str) -> list[int]:
        """Indices into the encoder's layer list (0 = input embedding, i = output of block i)."""
        depth = self.encoders[modality].depth
        chosen = list(range(1, depth + 1)) if self.cfg.use_fm_layers is None else [
            i + 1 for i in self.cfg.use_fm_layers if i < depth]
        return ([0] if self.cfg.use_input else []) + chosen

    def forward(self, tokens: dict[str, Tensor], static: Tensor, vis_idx: dict[str, Tensor | None],
                vis_pad: dict[str, Tensor], q_idx: dict[str, Tensor | None],
                q_pad: dict[str, Tensor]) -> dict[str, Tensor]:
        """Predictions [B, Lq, P] per modality at q_idx (normalised units). With prior_fill, `tokens` at the
        hidden positions hold the gap-filling prior; otherwise hidden values are ignored."""
        priors = contexts = None
        if self.cfg.prior_fill:
            priors = {m: take(tokens[m], q_idx[m]) for m in MODALITIES}
            contexts = {m: take(mask_context(self.cfg, visible_mask(tokens[m].shape[1], vis_idx[m], vis_pad[m]),
                                             m in IMAGE_MODALITIES), q_idx[m]) for m in MODALITIES}
        encoded = self.encode(tokens, static, vis_idx, vis_pad)
        return self.decode(encoded, vis_idx, vis_pad, q_idx, q_pad, priors, contexts)

    def encode(self, tokens: dict[str, Tensor], static: Tensor, vis_idx: dict[str, Tensor | None],
               vis_pad: dict[str, Tensor]) -> dict[str, tuple[list[Tensor], Tensor, Tensor]]:
        return {m: self.encoders[m](tokens[m], static, vis_idx[m], vis_pad[m]) for m in MODALITIES}

    def decode(self, encoded: dict[str, tuple[list[Tensor], Tensor, Tensor]], vis_idx: dict[str, Tensor | None],
               vis_pad: dict[str, Tensor], q_idx: dict[str, Tensor | None],
               q_pad: dict[str, Tensor], priors: dict[str, Tensor] | None = None,
               contexts: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        batch = encoded[MODALITIES[0]][1].shape[0]
        dtype = encoded[MODALITIES[0]][1].dtype
        if not self.cfg.use_cross_attn:
            out = self._pooled_decode(encoded, vis_idx, vis_pad, q_idx)
            return out if priors is None else {m: priors[m] + out[m] for m in MODALITIES}
        depth = self.cfg.decoder_depth
        per_block: list[list[Tensor]] = [[] for _ in range(depth)]
        pads = []
        for j, m in enumerate(MODALITIES):
            layers, final, pad = encoded[m]
            maps = self.wfm[m]([layers[i] for i in self.fm_layers(m)]) if self.wfm is not None else [final] * depth
            for i in range(depth):
                per_block[i].append(maps[i] + self.modality_emb[j])
            pads.append(pad)
        memories = [torch.cat(blocks, dim=1) for blocks in per_block]
        memory_bias = key_bias(torch.cat(pads, dim=1), dtype)
        return {m: self.decoders[m](memories, memory_bias, q_idx[m], q_pad[m], batch,
                                    None if priors is None else priors[m], None if contexts is None else contexts[m])
                for m in MODALITIES}

    def _pooled_decode(self, encoded: dict, vis_idx: dict, vis_pad: dict, q_idx: dict) -> dict[str, Tensor]:
        pooled = []
        for j, m in enumerate(MODALITIES):
            _, final, pad = encoded[m]
            keep = (~pad).to(final.dtype)[:, :, None]
            pooled.append((final * keep).sum(1) / keep.sum(1).clamp_min(1.0) + self.modality_emb[j])
        context = torch.stack(pooled, dim=1)
        out = {}
        for m in MODALITIES:
            _, final, _ = encoded[m]
            own = final if m in IMAGE_MODALITIES else final[:, 1:]  # drop the static token
            full = self.decoders[m](own, vis_idx[m], vis_pad[m], context)
            out[m] = take(full, q_idx[m])
        return out


def visible_mask(n: int, idx: Tensor | None, pad: Tensor) -> Tensor:
    """[B, N] float, 1 = visible, from the encoder's (idx, pad) form (idx None: pad is the hidden mask)."""
    if idx is None:
        return (~pad).to(torch.float32)
    canvas = torch.zeros(pad.shape[0], n + 1, device=pad.device)
    target = torch.where(pad, torch.full_like(idx, n), idx)  # padding goes to a dropped extra slot
    return canvas.scatter(1, target, torch.ones_like(target, dtype=torch.float32))[:, :n]


def select(mask: Tensor, keep: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of mask [B, N] as (idx [B, L], pad [B, L]); `keep` < 1 takes a random
    fraction (at least one) of them per row, as CrossMAE's partial reconstruction does."""
    n = mask.shape[1]
    count = mask.sum(1)
    order = torch.arange(n, device=mask.device, dtype=torch.float32)[None] / n
    if keep < 1.0:
        order = torch.rand(mask.shape, generator=generator).to(mask.device)
        count = torch.where(count > 0, torch.clamp((count.float() * keep).ceil().long(), min=1), count)
    scores = order + (~mask).float() * 2.0
    length = max(int(count.max()), 1)
    idx = scores.argsort(dim=1)[:, :length]
    pad = torch.arange(length, device=mask.device)[None] >= count[:, None]
    return idx, pad


def patchify(x: Tensor, patch: int) -> Tensor:
    """[B, T, H, W] -> [B, T*Hp*Wp, p*p]"""
    b, t, h, w = x.shape
    x = x.reshape(b, t, h // patch, patch, w // patch, patch).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, t * (h // patch) * (w // patch), patch * patch)


def unpatchify(tokens: Tensor, t: int, h: int, w: int, patch: int) -> Tensor:
    """[B, T*Hp*Wp, p*p] -> [B, T, H, W]"""
    b = tokens.shape[0]
    x = tokens.reshape(b, t, h // patch, w // patch, patch, patch).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, t, h, w)


def to_tokens(cfg: WaterModelConfig, fields: dict[str, Tensor]) -> dict[str, Tensor]:
    return {m: patchify(fields[m], cfg.patch) if m in IMAGE_MODALITIES else fields[m][:, :, None] for m in MODALITIES}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def masked_mse(pred: Tensor, target: Tensor, pad: Tensor) -> Tensor:
    """Mean squared error over non-padded query tokens (all values of each token)."""
    keep = (~pad).to(pred.dtype)[:, :, None]
    return (((pred - target) ** 2) * keep).sum() / (keep.sum() * pred.shape[-1]).clamp_min(1.0)


def loss_terms(model: WaterMAE, tokens: dict[str, Tensor], static: Tensor, hidden: dict[str, Tensor],
               scored: dict[str, Tensor] | None = None,
               generator: torch.Generator | None = None,
               targets: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per-modality MSE on (a `kept_mask_ratio` fraction of) the hidden tokens, in normalised units.

    `scored` (default = hidden) limits the scored tokens, e.g. to exclude tokens whose data is missing.
    `targets` (default = tokens) are the true tokens when `tokens` carry the gap-filling prior at hidden
    positions (prior_fill)."""
    vis = {m: select(~hidden[m]) for m in MODALITIES}
    keep = model.cfg.kept_mask_ratio if model.training else 1.0
    chosen = hidden if scored is None else scored
    query = {m: select(chosen[m], keep, generator) for m in MODALITIES}
    truth = tokens if targets is None else targets
    pred = model(tokens, static, {m: v[0] for m, v in vis.items()}, {m: v[1] for m, v in vis.items()},
                 {m: q[0] for m, q in query.items()}, {m: q[1] for m, q in query.items()})
    return {m: masked_mse(pred[m], take(truth[m], query[m][0]), query[m][1]) for m in MODALITIES}


class DenseReconstructor(nn.Module):
    """The exported graph: full normalised fields + boolean hidden masks -> completed fields.

    Hidden tokens are excluded by attention masks (never by shape), so any masking pattern and any
    visible count work in one graph; hidden input values are ignored (send zeros). Visible tokens are
    copied from the input, hidden ones come from the decoder. Masks: image [B, T, Hp, Wp], vector [B, T_v].
    With `prior_fill` the hidden input values must hold the gap-filling prior (gap_prior, computed by the
    caller from the visible values) instead of being ignored.
    """

    def __init__(self, model: WaterMAE) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, precip: Tensor, soil: Tensor, temp: Tensor, evap: Tensor, riverflow: Tensor, static: Tensor,
                precip_mask: Tensor, soil_mask: Tensor, temp_mask: Tensor, evap_mask: Tensor,
                riverflow_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        cfg = self.cfg
        fields = {"precip": precip, "soil": soil, "temp": temp, "evap": evap, "riverflow": riverflow}
        masks = {"precip": precip_mask, "soil": soil_mask, "temp": temp_mask, "evap": evap_mask,
                 "riverflow": riverflow_mask}
        hidden = {m: masks[m].reshape(masks[m].shape[0], -1) for m in MODALITIES}
        if cfg.prior_fill:
            tokens = to_tokens(cfg, fields)
        else:
            tokens = to_tokens(cfg, {m: torch.where(self._value_mask(m, masks[m]), 0.0, fields[m])
                                     for m in MODALITIES})
        none: dict[str, Tensor | None] = {m: None for m in MODALITIES}
        # Queries at every position; with decoder self-attention, queries only attend to hidden queries.
        q_pad = {m: ~hidden[m] for m in MODALITIES}
        pred = self.model(tokens, static, none, hidden, none, q_pad)
        out = []
        for m in MODALITIES:
            merged = torch.where(hidden[m][:, :, None], pred[m], tokens[m])
            if m in IMAGE_MODALITIES:
                out.append(unpatchify(merged, cfg.frames, cfg.height, cfg.width, cfg.patch))
            else:
                out.append(merged[:, :, 0])
        return tuple(out)

    def _value_mask(self, modality: str, mask: Tensor) -> Tensor:
        if modality not in IMAGE_MODALITIES:
            return mask
        p = self.cfg.patch
        return mask.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
