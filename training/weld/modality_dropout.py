"""Modality dropout: the training-time counterpart of a model version's optional modalities.

Each sample of a batch loses each of the `droppable` modalities with probability `p`: its tensor becomes zeros
(what the service sends for an absent one) and its presence bit 0, so the fusion learns to answer from the
modalities it has. A sample never loses all its present modalities (one of them, at random, is kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from families.weld.preprocessing import MODALITIES


def check_droppable(p: float, droppable: Sequence[str]) -> None:
    """ValueError unless 0 <= p < 1 and `droppable` names weld modalities (some, when p > 0)."""
    unknown = sorted(set(droppable) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; the weld modalities are {list(MODALITIES)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"modality_dropout must be in [0, 1), got {p}")
    if p > 0 and not droppable:
        raise ValueError("modality_dropout > 0 needs optional_modalities: the modalities it may drop")


def drop_modalities(inputs: dict[str, torch.Tensor], mask: torch.Tensor, p: float, droppable: Sequence[str],
                    generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(inputs, mask (B, 4) bool) with random modalities of each sample dropped; unchanged when p == 0."""
    check_droppable(p, droppable)
    if p == 0 or not droppable:
        return inputs, mask
    columns = torch.tensor([m in droppable for m in MODALITIES])
    drop = (torch.rand(mask.shape, generator=generator) < p) & columns & mask
    emptied = ~(mask & ~drop).any(dim=1) & mask.any(dim=1)
    if bool(emptied.any()):  # a sample left with nothing keeps one of its dropped modalities, at random
        scores = torch.rand(mask.shape, generator=generator).masked_fill(~drop, -1.0)
        rescued = torch.zeros_like(drop)
        rescued[torch.arange(len(drop)), scores.argmax(dim=1)] = True
        drop &= ~(rescued & emptied[:, None])
    new_mask = mask & ~drop
    out = {}
    for i, m in enumerate(MODALITIES):
        gone = drop[:, i]
        tensor = inputs[m]
        if bool(gone.any()):
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            tensor = tensor * (~gone).to(tensor.dtype).view(shape).to(tensor.device)
        out[m] = tensor
    return out, new_mask
