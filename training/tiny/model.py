from __future__ import annotations

import torch
from torch import nn

from training.tiny.config import TinyModelConfig


class TinyRegressor(nn.Module):
    """MLP with two outputs: a regression `y` (B, out) and its L2 norm `norm` (B, 1)."""

    def __init__(self, config: TinyModelConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Linear(config.in_features, config.hidden), nn.GELU()]
        for _ in range(config.depth - 1):
            layers += [nn.Linear(config.hidden, config.hidden), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.shared = nn.Linear(config.hidden, config.hidden)
        self.head = nn.Linear(config.hidden, config.out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        for _ in range(self.config.repeats):
            h = torch.tanh(self.shared(h))
        y = self.head(h)
        return y, y.norm(dim=1, keepdim=True)
