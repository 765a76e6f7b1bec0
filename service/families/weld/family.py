"""The weld family's plug-in: the manifest's section parsed once per loaded version, the gallery opened (shipped
references + those enrolled in the gallery database, `SERVICE_WELD_GALLERY_URL`; an earlier `enrolled.npz` in the
version's state folder is migrated into it), the OOD threshold and the quality recorder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from families.weld.classes import CLASSES
from families.weld.contract import Preprocessing
from families.weld.gallery import GalleryKey, GalleryStore
from families.weld.gallery_db import open_gallery_db
from families.weld.ood import threshold_from
from families.weld.preprocessing import warm_up
from service.families.weld import SPEC
from service.families.weld.quality import WeldQuality
from service.families.weld.routes import WeldState, router
from service.families.weld.schemas import classify_example
from service.plugin import FamilyPlugin

if TYPE_CHECKING:
    from service.models.version import LoadedVersion


class WeldPlugin(FamilyPlugin[WeldState]):
    spec = SPEC

    def __init__(self) -> None:
        self.router = router

    def prepare(self, version: LoadedVersion) -> WeldState:
        pre = version.manifest.preprocessing_as(Preprocessing)
        settings = self.settings_of(version)
        db = open_gallery_db(settings.gallery_url, version.settings.state_dir)
        try:
            gallery = GalleryStore(version.asset_path(pre.knn.gallery), db,
                                   GalleryKey(version.name, str(version.version)), version.device,
                                   num_classes=len(CLASSES), legacy_dir=version.state_dir,
                                   faiss_min=settings.faiss_min, metric=pre.knn.metric)
            warm_up(pre.params)
            shipped = gallery.snapshot.embeddings[:gallery.snapshot.shipped].cpu().numpy()
            threshold = threshold_from(pre.quality, pre.knn.metric, shipped)
            quality = WeldQuality.create(self.metrics_of(version), version.name, str(version.version), CLASSES,
                                         pre.knn.metric, threshold, settings.quality_ood_window)
        except BaseException:
            db.close()  # a failed load is never retired: its connections would stay open for good
            raise
        return WeldState(preprocessing=pre, gallery=gallery, quality=quality)

    def teardown(self, version: LoadedVersion, state: WeldState) -> None:
        """The retired version's gallery connections (PostgreSQL: two server backends; SQLite: two file handles)."""
        state.gallery.close()

    def openapi_examples(self, version: LoadedVersion, state: WeldState) -> dict[str, Any]:
        example = classify_example(state.params)
        return {} if example is None else {"/weld/classify": example}


PLUGIN = WeldPlugin()
