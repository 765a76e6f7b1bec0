"""Supervised contrastive loss (Khosla et al. 2020) and the optional SupCon + cross-entropy mix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon "L_out" over one batch of embeddings (B, D) with integer labels (B,).

    Anchors without any positive in the batch contribute nothing (their positive count is clamped, so
    the result is never NaN); a batch without any positive pair returns 0 with a gradient path. With every
    embedding identical and a single class the loss is exactly log(B - 1).
    """
    z = F.normalize(embeddings.float(), dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    pos_count = positives.sum(1)
    # where() (not multiplication) so that -inf on the diagonal never meets a 0 and becomes NaN.
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    per_anchor = -pos_log_prob / pos_count.clamp_min(1)
    has_pos = pos_count > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    return per_anchor[has_pos].mean()


def combined_loss(embeddings: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor,
                  temperature: float, ce_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 - w) * SupCon + w * CE (w = 0: pure SupCon). Returns the loss and its parts for logging."""
    supcon = supcon_loss(embeddings, labels, temperature)
    parts = {"supcon": float(supcon.detach())}
    if ce_weight <= 0 or logits is None:
        return supcon, parts
    ce = F.cross_entropy(logits.float(), labels)
    parts["ce"] = float(ce.detach())
    return (1.0 - ce_weight) * supcon + ce_weight * ce, parts
