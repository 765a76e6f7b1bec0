"""The tiny family's plug-in: nothing to prepare (the graph is the whole model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from families.tiny.contract import Preprocessing
from service.families.tiny import SPEC
from service.families.tiny.routes import router
from service.plugin import FamilyPlugin

if TYPE_CHECKING:
    from service.models.version import LoadedVersion


class TinyPlugin(FamilyPlugin[Preprocessing]):
    spec = SPEC

    def __init__(self) -> None:
        self.router = router

    def prepare(self, version: LoadedVersion) -> Preprocessing:
        return version.manifest.preprocessing_as(Preprocessing)


PLUGIN = TinyPlugin()
