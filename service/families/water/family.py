"""The water family's plug-in: the manifest's section parsed once per loaded version, with its quality recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from families.water.contract import Preprocessing
from service.families.water import SPEC
from service.families.water.quality import WaterQuality
from service.families.water.routes import WaterState, router
from service.families.water.schemas import max_json_values, reconstruct_example
from service.plugin import FamilyPlugin

if TYPE_CHECKING:
    from service.models.version import LoadedVersion


class WaterPlugin(FamilyPlugin[WaterState]):
    spec = SPEC

    def __init__(self) -> None:
        self.router = router

    def prepare(self, version: LoadedVersion) -> WaterState:
        pre = version.manifest.preprocessing_as(Preprocessing)
        quality = WaterQuality(self.metrics_of(version), version.metrics.drift, version.name, str(version.version),
                               pre.training_statistics, self.settings_of(version).quality_selfcheck_fraction)
        return WaterState(preprocessing=pre, stats=pre.stats.norm_stats(), max_json_values=max_json_values(pre.grid),
                          quality=quality)

    def openapi_examples(self, version: LoadedVersion, state: WaterState) -> dict[str, Any]:
        return {"/water/reconstruct": reconstruct_example(state.preprocessing)}


PLUGIN = WaterPlugin()
