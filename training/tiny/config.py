"""The tiny model's configuration: architecture and the few training knobs, with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass
class TinyModelConfig:
    in_features: int = 16
    hidden: int = 32
    out_features: int = 4
    depth: int = 2  # hidden layers
    # Times the last hidden layer is re-applied (shared weights): a compute-cost knob that keeps the file
    # small, used to make a deliberately slow model for load tests.
    repeats: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TinyConfig:
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    seconds: float | None = None  # training-time budget (None: the steps decide)
    threads: int | None = None  # torch CPU threads during training (None: leave the setting alone)
    save_every_s: float = 300.0  # seconds between resumable states (<out>/train_state.pt)
    resume: bool = False  # continue <out>/train_state.pt


PRESETS = {
    "default": TinyConfig(),
    # ~50 ms per batch of 8 on one CPU thread, untrained: the platform's load and timeout tests.
    "slow": TinyConfig(model=TinyModelConfig(hidden=1024, repeats=200), steps=0),
}


def load_config(name: str = "default") -> TinyConfig:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown tiny preset {name!r}; known: {', '.join(PRESETS)}") from None
    return replace(preset, model=TinyModelConfig(**preset.model.to_dict()))
