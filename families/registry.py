"""The one registry of model families (CompressAI's `register_model` is the model).

A family is one name and four parts, found at the same place for every family, so that nobody has to guess:

- contract: `families.<name>.contract`: `Preprocessing` (the typed manifest section) and the asset names;
- training: `training.<name>.train`: `train(config, out_dir, data=None, *, log=print) -> TrainResult`,
  `load_checkpoint(path) -> Checkpoint` (training/checkpoints.py) and `main()`, the CLI;
- export: `export.families.<name>`: `plan_from_checkpoint(checkpoint: Path, options) -> ExportPlan`;
- service: `service.families.<name>.family:PLUGIN`: the service plug-in (`service.plugin.FamilyPlugin`), and its
  light declaration `service.families.<name>:SPEC` (`service.plugin.FamilySpec`: route prefix, settings, metrics;
  read by the platform and deploy/ without loading model code).

Parts are imported when asked for (`entry.load("service")`), never by this module: the service imports only
service parts, training never does (the layers stay apart), and listing the families costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

Part = Literal["contract", "training", "export", "service", "spec"]

_PART_PATHS: dict[str, str] = {
    "contract": "families.{name}.contract",
    "training": "training.{name}.train",
    "export": "export.families.{name}",
    "service": "service.families.{name}.family:PLUGIN",
    "spec": "service.families.{name}:SPEC",
}


@dataclass(frozen=True)
class FamilyEntry:
    """One model family: its name (the manifest's `family`), its task, and where its parts live."""

    name: str
    task: str
    summary: str

    def path(self, part: Part) -> str:
        return _PART_PATHS[part].format(name=self.name)

    def load(self, part: Part) -> Any:
        """The part's module (contract, training, export) or object (service: the plug-in; spec: its declaration)."""
        module_name, _, attribute = self.path(part).partition(":")
        module: ModuleType = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module


REGISTRY: dict[str, FamilyEntry] = {}


def register_family(entry: FamilyEntry) -> FamilyEntry:
    if entry.name in REGISTRY:
        raise ValueError(f"family {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


def family(name: str) -> FamilyEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


register_family(FamilyEntry("tiny", "regression", "a two-layer MLP: the platform's test model, /v2 only"))
register_family(FamilyEntry("traffic", "forecasting", "alternating spatio-temporal forecaster (METR-LA format)"))
register_family(FamilyEntry("weld", "classification", "four-modality embedding + k-NN against a gallery"))
register_family(FamilyEntry("water", "reconstruction", "multimodal hydrology MAE with a CrossMAE decoder"))
register_family(FamilyEntry("imagecodec", "compression", "HPCM learned image codec with RWKV context"))
