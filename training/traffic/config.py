"""The traffic training configuration: the model's architecture, the data and the training loop, with the
YAML presets of configs/ (quick, deep, fallback, default, tiny).

A preset's sections are partial: what it leaves out takes the defaults below (the model's from
`TrafficModelConfig`). The model's data-dependent fields (sensor count, time features) are set from the data
when the model is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from training.traffic.model import TrafficModelConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SECTIONS = ("model", "data", "train")


@dataclass
class DataConfig:
    source: Literal["synthetic", "files"] = "synthetic"
    dir: str | None = None  # METR-LA-format folder (`source: files`)
    # The synthetic generator's size and seed (training/traffic/synthetic.py).
    nodes: int = 207
    days: int = 35
    seed: int = 0
    use_time_of_day: bool = True
    use_day_of_week: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "files"):
            raise ValueError(f"data.source must be 'synthetic' or 'files', got {self.source!r}")
        if self.source == "files" and not self.dir:
            raise ValueError("data.source 'files' needs data.dir")


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 50
    patience: int = 10  # epochs without a better validation MAE before stopping
    grad_clip: float = 5.0  # 0 = off
    seed: int = 0
    max_batches_per_epoch: int | None = None
    max_eval_batches: int | None = None  # validation batches per epoch (None = the whole split)
    # Training stops at the batch that crosses this many seconds (the time-boxed default model).
    time_budget_s: float | None = None
    threads: int | None = None  # torch CPU threads (None = leave the setting alone)
    eval_batch_size: int = 64
    device: str = "cpu"
    test_max_batches: int | None = None  # bounds the final test evaluation (None = the whole split)
    amp: bool = False  # bf16 autocast for training steps (GPU, or a CPU with bf16 matrix units)
    max_steps: int | None = None  # stop after this many optimiser steps (None: the epochs decide)
    save_every_s: float = 300.0  # seconds between resumable states (<out>/train_state.pt)
    resume: bool = False  # continue <out>/train_state.pt


@dataclass
class TrafficConfig:
    name: str = "custom"
    model: TrafficModelConfig = field(default_factory=lambda: TrafficModelConfig(num_nodes=DataConfig().nodes))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str = "custom") -> TrafficConfig:
        """A config from its sections (a preset file, or the dict a checkpoint carries); unknown keys are refused."""
        unknown = set(raw) - {*SECTIONS, "name"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}")
        data = DataConfig(**_known(DataConfig, raw.get("data") or {}, "data"))
        # Placeholders until the data is read: a real file's sensor count is known only then.
        model = TrafficModelConfig.from_dict({"num_nodes": data.nodes, "use_time_of_day": data.use_time_of_day,
                                              "use_day_of_week": data.use_day_of_week, **(raw.get("model") or {})})
        train = TrainConfig(**_known(TrainConfig, raw.get("train") or {}, "train"))
        return cls(name=str(raw.get("name", name)), model=model, data=data, train=train)

    def for_data(self, num_nodes: int, use_time_of_day: bool, use_day_of_week: bool) -> TrafficModelConfig:
        """The model's config for the data it trains on."""
        return replace(self.model, num_nodes=num_nodes, use_time_of_day=use_time_of_day,
                       use_day_of_week=use_day_of_week)


def _known(section: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(values) - {f.name for f in fields(section)}
    if unknown:
        raise ValueError(f"unknown {where} config keys: {sorted(unknown)}")
    return values


def load_config(name_or_path: str | Path) -> TrafficConfig:
    """A preset by name (configs/<name>.yaml) or a YAML file of the same layout."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config {str(name_or_path)!r} not found (presets: {known})")
    raw = yaml.safe_load(path.read_text()) or {}
    if "name" in raw:
        raise ValueError(f"{path}: unknown sections ['name']")
    try:
        return TrafficConfig.from_dict(raw, name=path.stem)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
