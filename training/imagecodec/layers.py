"""Building blocks: residual conv blocks, channel LayerNorm, bidirectional WKV, RWKV and windowed
cross-attention context cells. Plain PyTorch ops only, so every block exports to ONNX and TorchScript."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Doubling steps of the reference WKV scan (`doubling_scan`): up to 2**17 tokens (a 6k x 6k image at s3).
WKV_LEVELS = 17


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class ResBlock(nn.Module):
    """Cheap residual block: depthwise 3x3 conv (spatial) then a 1x1 MLP (channels)."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw1 = nn.Conv2d(channels, channels * expansion, 1)
        self.pw2 = nn.Conv2d(channels * expansion, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.gelu(self.pw1(self.dw(x))))


def _shift(s: torch.Tensor, d: int, forward: bool) -> torch.Tensor:
    """s[..., t - d] (forward) or s[..., t + d] (backward) along the last axis, zero outside."""
    n = s.shape[-1]
    pos = torch.arange(n, device=s.device)
    idx = pos - d if forward else pos + d
    valid = ((idx >= 0) & (idx < n)).to(s.dtype)
    return s.index_select(-1, idx.clamp(0, n - 1)) * valid


def doubling_scan(b: torch.Tensor, log_rho: torch.Tensor, forward: bool) -> torch.Tensor:
    """Reference scan (the previous `decay_scan`): Hillis-Steele doubling, O(N log N) work, O(N) memory.

    After level k every s_t holds the sum over the 2**(k+1) nearest terms, so a fixed number of levels
    covers any sequence up to 2**WKV_LEVELS tokens; exported graphs keep all WKV_LEVELS levels."""
    s = b
    n = b.shape[-1]
    for level in range(WKV_LEVELS):
        d = 1 << level
        if not torch.jit.is_tracing() and not torch.jit.is_scripting() and d >= n:
            break  # eager: later levels add nothing (exported graphs keep all levels for any size)
        s = s + torch.exp(log_rho * d) * _shift(s, d, forward)
    return s


@torch.jit.unused
def _traced_chunk_len(n):
    # type: (int) -> int
    """`_chunk_len` on the traced 0-d size tensor, so an exported graph computes the chunk length from its
    input's shape. (int -> int for the TorchScript compiler, which never runs this: a type comment, as
    string annotations of unused functions do not resolve.)"""
    steps = torch.ceil(1.7 * torch.pow(n.to(torch.float32), 1.0 / 3.0) / 16)
    return (steps * 16).clamp(16, 256).to(torch.int64)


def _chunk_len(n: int) -> int:
    """Chunk length of the chunked scans for N tokens: the multiple of 16 at or above 1.7 * N**(1/3),
    clamped to [16, 256]: 16 up to 833 tokens, 32 up to 6,667, 48 at 16,384 (the service's largest s3
    grid). The work is ~N * L per channel plus the small carry scan, so short chunks win; measured
    (benchmarks/imagecodec_scan.py) against sqrt(N)-sized and fixed chunks. Computed from the tensor's shape,
    in exported graphs too (traced: as graph ops; scripted: as ints)."""
    if torch.jit.is_tracing():
        return _traced_chunk_len(n)  # n is a traced 0-d size tensor here
    steps = int(math.ceil(1.7 * float(n) ** (1.0 / 3.0) / 16))
    return max(16, min(256, steps * 16))


def _decay(log_rho: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """rho**steps where steps >= 0 (exp of a non-positive number: every factor <= 1), 0 where steps < 0.

    Factors below e**-69 (1e-30) are set to 0: they change no float32 sum of positive terms, and keep
    denormals (~100x slower arithmetic on CPUs) out of the matmuls. log_rho: (C, 1); steps: any shape S ->
    (C, *S)."""
    shape = [log_rho.shape[0]] + [1] * steps.dim()
    exponent = log_rho.reshape(shape) * steps.to(log_rho.dtype)
    keep = (steps >= 0) & (exponent > -69.0)
    return torch.exp(torch.where(keep, exponent, torch.full_like(exponent, -math.inf)))


def _chunks(b: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, C, N) -> (B, C, nc, chunk), zero padded at the end."""
    bs, c, n = b.shape
    nc = (n + chunk - 1) // chunk
    return F.pad(b, [0, nc * chunk - n]).reshape(bs, c, nc, chunk)


def _carry_matrix(log_rho: torch.Tensor, chunks: int, chunk: int) -> torch.Tensor:
    """(C, nc, nc) [j, k] = rho**(chunk * (j - k - 1)) for k < j, else 0: multiplied by the chunk totals (each
    chunk's state at its last token), the carry into chunk j from the chunks before it; its transpose, with
    the totals at each chunk's first token, the carry from the chunks after it."""
    pos = torch.arange(chunks, device=log_rho.device)
    gap = pos[:, None] - pos[None, :]
    return _decay(log_rho, torch.where(gap >= 1, (gap - 1) * chunk, torch.full_like(gap, -1)))


def _scan_dense_carries(b: torch.Tensor, log_rho: torch.Tensor, forward: bool, size: int) -> torch.Tensor:
    """Inclusive chunked scan, chunks of `size`, carries between chunks by one dense (nc x nc) matrix."""
    n = b.shape[-1]
    x = _chunks(b, size)
    pos = torch.arange(size, device=b.device)
    steps = pos[:, None] - pos[None, :] if forward else pos[None, :] - pos[:, None]  # [t, i]
    inner = x @ _decay(log_rho, steps).transpose(-1, -2)  # (B, C, nc, L): sum within the chunk
    far = (size - 1 - pos) if forward else pos  # steps from i to the chunk's far end
    totals = x @ _decay(log_rho, far).unsqueeze(-1)  # (B, C, nc, 1)
    carries = _carry_matrix(log_rho, x.shape[2], size)
    carry = (carries if forward else carries.transpose(-1, -2)) @ totals
    into = pos + 1 if forward else size - pos  # steps from the previous chunk's end to t
    out = inner + carry * _decay(log_rho, into).unsqueeze(1)
    return out.reshape(b.shape[0], b.shape[1], -1)[:, :, :n]


def _carries(totals: torch.Tensor, log_rho: torch.Tensor, size: int, forward: bool) -> torch.Tensor:
    """Carry into each chunk: the exclusive scan of the chunk totals (B, C, nc) with decay rho**size per
    chunk, itself chunked once (chunks of `_chunk_len(nc)`, dense carries) -> (B, C, nc, 1)."""
    nc = totals.shape[-1]
    inclusive = _scan_dense_carries(totals, log_rho * size, forward, _chunk_len(nc))
    if forward:
        return F.pad(inclusive, [1, 0])[:, :, :nc].unsqueeze(-1)
    return F.pad(inclusive, [0, 1])[:, :, 1:].unsqueeze(-1)


def decay_scan(b: torch.Tensor, log_rho: torch.Tensor, forward: bool, chunk: int | None = None) -> torch.Tensor:
    """Inclusive linear scan s_t = rho * s_{t-1} + b_t (or the reverse direction) over the last axis.

    Chunked, O(N * L) work and O(N + L**2) memory per channel for chunks of L tokens (`_chunk_len`):
    in-chunk sums as one batched matmul with the L x L triangular decay matrix rho**(t - i), then the
    carries between chunks, a scan of the N / L chunk totals with decay rho**L (chunked the same way once,
    with a dense matrix over its chunk ends), then s_t += rho**(offset + 1) * carry. Only multiplications by
    rho**d <= 1, so it is stable in float32. `b`: (B, C, N); `log_rho`: (C, 1) with rho = exp(log_rho) in
    (0, 1); `chunk` overrides L."""
    n = b.shape[-1]
    size = _chunk_len(n) if chunk is None else chunk
    x = _chunks(b, size)
    pos = torch.arange(size, device=b.device)
    steps = pos[:, None] - pos[None, :] if forward else pos[None, :] - pos[:, None]  # [t, i]
    inner = x @ _decay(log_rho, steps).transpose(-1, -2)  # (B, C, nc, L): sum within the chunk
    far = (size - 1 - pos) if forward else pos  # steps from i to the chunk's far end
    totals = (x @ _decay(log_rho, far).unsqueeze(-1)).squeeze(-1)  # (B, C, nc)
    carry = _carries(totals, log_rho, size, forward)
    into = pos + 1 if forward else size - pos  # steps from the previous chunk's end to t
    out = inner + carry * _decay(log_rho, into).unsqueeze(1)
    return out.reshape(b.shape[0], b.shape[1], -1)[:, :, :n]


def _bidirectional_sums(b: torch.Tensor, log_rho: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """sum_{i != t} rho**(|t - i| - 1) b_i for every t (both exclusive scans of `bidirectional_wkv` at once).

    Same chunking as `decay_scan`, but one symmetric in-chunk matrix for both directions."""
    n = b.shape[-1]
    size = _chunk_len(n) if chunk is None else chunk
    x = _chunks(b, size)
    pos = torch.arange(size, device=b.device)
    dist = (pos[:, None] - pos[None, :]).abs()
    inner = x @ _decay(log_rho, torch.where(dist >= 1, dist - 1, torch.full_like(dist, -1)))  # symmetric
    ends = torch.stack([size - 1 - pos, pos], dim=-1)  # (L, 2): steps to the chunk's last / first token
    totals = x @ _decay(log_rho, ends)  # (B, C, nc, 2)
    from_left = _carries(totals[..., 0], log_rho, size, True)
    from_right = _carries(totals[..., 1], log_rho, size, False)
    out = inner + from_left * _decay(log_rho, pos).unsqueeze(1)
    out = out + from_right * _decay(log_rho, size - 1 - pos).unsqueeze(1)
    return out.reshape(b.shape[0], b.shape[1], -1)[:, :, :n]


def bidirectional_wkv(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Vision-RWKV style bidirectional WKV over flattened tokens.

    k, v: (B, C, N); w: (C,) decay >= 0; u: (C,) bonus for the token itself.
    wkv_t = (sum_{i != t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t) / (same with v = 1).
    """
    a = torch.exp(k.clamp(-15.0, 15.0))
    both = torch.cat([a * v, a], dim=1)  # numerator and denominator scanned together
    log_rho = -torch.cat([w, w]).unsqueeze(-1)
    sums = _bidirectional_sums(both, log_rho)
    self_w = torch.exp(u).unsqueeze(-1)
    c = v.shape[1]
    return (sums[:, :c] + self_w * a * v) / (sums[:, c:] + self_w * a)


def bidirectional_wkv_doubling(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The previous `bidirectional_wkv` (two doubling scans + shifts): reference for tests and benchmarks."""
    a = torch.exp(k.clamp(-15.0, 15.0))
    both = torch.cat([a * v, a], dim=1)
    log_rho = -torch.cat([w, w]).unsqueeze(-1)
    fwd = _shift(doubling_scan(both, log_rho, True), 1, True)  # sum over i < t
    bwd = _shift(doubling_scan(both, log_rho, False), 1, False)  # sum over i > t
    self_w = torch.exp(u).unsqueeze(-1)
    c = v.shape[1]
    num = fwd[:, :c] + bwd[:, :c] + self_w * a * v
    den = fwd[:, c:] + bwd[:, c:] + self_w * a
    return num / den


class SpatialMix(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # 2-D token shift
        self.key = nn.Conv2d(dim, dim, 1, bias=False)
        self.value = nn.Conv2d(dim, dim, 1, bias=False)
        self.receptance = nn.Conv2d(dim, dim, 1, bias=False)
        self.output = nn.Conv2d(dim, dim, 1, bias=False)
        # Per-channel decays spread from local (w ~ 2) to long range (w ~ 0.02).
        self.log_decay = nn.Parameter(torch.linspace(math.log(2.0), math.log(0.02), dim))
        self.bonus = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xx = x + self.shift(x)
        k = self.key(xx).flatten(2)
        v = self.value(xx).flatten(2)
        r = torch.sigmoid(self.receptance(xx))
        decay = torch.exp(self.log_decay).clamp(max=8.0)
        wkv = bidirectional_wkv(k, v, decay, self.bonus.clamp(-10.0, 10.0)).reshape(b, c, h, w)
        return self.output(r * wkv)


class ChannelMix(nn.Module):
    def __init__(self, dim: int, hidden_rate: int) -> None:
        super().__init__()
        self.key = nn.Conv2d(dim, dim * hidden_rate, 1, bias=False)
        self.value = nn.Conv2d(dim * hidden_rate, dim, 1, bias=False)
        self.receptance = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.receptance(x)) * self.value(F.relu(self.key(x)).square())


class RWKVBlock(nn.Module):
    """LN -> spatial mix -> LN -> channel mix, each with a learned per-channel residual scale."""

    def __init__(self, dim: int, hidden_rate: int) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(dim)
        self.spatial = SpatialMix(dim)
        self.norm2 = ChannelNorm(dim)
        self.channel = ChannelMix(dim, hidden_rate)
        self.gamma1 = nn.Parameter(torch.full((1, dim, 1, 1), 0.5))
        self.gamma2 = nn.Parameter(torch.full((1, dim, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.spatial(self.norm1(x))
        return x + self.gamma2 * self.channel(self.norm2(x))


class RWKVCell(nn.Module):
    """h_t = cell(x_t, h_prev): 1x1 conv on concat -> RWKV block -> 1x1 out conv. O(N) in tokens."""

    def __init__(self, dim: int, hidden_rate: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(2 * dim, dim, 1)
        self.block = RWKVBlock(dim, hidden_rate)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.inp(torch.cat([x, h_prev], dim=1))))


class CrossAttentionCell(nn.Module):
    """Baseline HPCM cell: windowed multi-head cross-attention, Q from x_t, K/V from h_prev, then an MLP.

    Each window holds window**2 tokens, so the attention maps cost O(N * window**2) memory."""

    def __init__(self, dim: int, window: int, head_dim: int) -> None:
        super().__init__()
        self.window = window
        self.heads = max(1, dim // head_dim)
        self.norm_q = ChannelNorm(dim)
        self.norm_kv = ChannelNorm(dim)
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, 2 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.mlp = nn.Sequential(ChannelNorm(dim), nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B * nWin, heads, window*window, C/heads); H and W are multiples of window.
        b, c, h, w = t.shape
        ws = self.window
        t = t.reshape(b, self.heads, c // self.heads, h // ws, ws, w // ws, ws)
        t = t.permute(0, 3, 5, 1, 4, 6, 2)
        return t.reshape(-1, self.heads, ws * ws, c // self.heads)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        b, c, h, w = h_prev.shape
        ws = self.window
        pad_h = (ws - h % ws) % ws
        pad_w = (ws - w % ws) % ws
        q = F.pad(self.q(self.norm_q(x)), (0, pad_w, 0, pad_h))
        k, v = F.pad(self.kv(self.norm_kv(h_prev)), (0, pad_w, 0, pad_h)).chunk(2, dim=1)
        hp, wp = h + pad_h, w + pad_w
        # Padded key positions are masked out so the result does not depend on the padding.
        valid = F.pad(torch.ones_like(h_prev[:, :1]), (0, pad_w, 0, pad_h))
        valid = valid.reshape(b, 1, hp // ws, ws, wp // ws, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, 1, ws * ws)
        qw, kw, vw = self._windows(q), self._windows(k), self._windows(v)
        scores = qw @ kw.transpose(-2, -1) / math.sqrt(c // self.heads)
        scores = scores.masked_fill(valid < 0.5, -1e4)
        out = torch.softmax(scores, dim=-1) @ vw  # (B*nWin, heads, ws*ws, d)
        out = out.reshape(b, hp // ws, wp // ws, self.heads, ws, ws, c // self.heads)
        out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)[:, :, :h, :w]
        h_new = h_prev + self.proj(out)
        return h_new + self.mlp(h_new)
