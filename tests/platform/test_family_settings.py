"""Each family's settings (`SERVICE_<F>_*`, service/families/<f>/settings.py) and the names they had before they
moved out of the platform's `Settings`: still read, the new name first, a deprecation warning logged once."""

from __future__ import annotations

import logging
import warnings

import pytest

from service import settings as settings_module
from service.families import specs
from service.settings import Settings

# old environment variable -> (family, field, a value, what the field holds then)
RENAMED = {
    "SERVICE_QUALITY_FORECASTS": ("traffic", "quality_forecasts", "7", 7),
    "SERVICE_QUALITY_FORECASTS_MB": ("traffic", "quality_forecasts_mb", "1.5", 1.5),
    "SERVICE_QUALITY_FORECAST_TTL_S": ("traffic", "quality_forecast_ttl_s", "60", 60.0),
    "SERVICE_GALLERY_URL": ("weld", "gallery_url", "sqlite:///x.db", "sqlite:///x.db"),
    "SERVICE_QUALITY_OOD_WINDOW": ("weld", "quality_ood_window", "9", 9),
    "SERVICE_QUALITY_WATER_SELFCHECK_FRACTION": ("water", "quality_selfcheck_fraction", "0.5", 0.5),
    "SERVICE_QUALITY_CODEC_PSNR_FRACTION": ("imagecodec", "quality_psnr_fraction", "1.0", 1.0),
}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())  # "once per process" starts again for each test
    for name in (*RENAMED, "SERVICE_WELD_FAISS_MIN", "SERVICE_TRAFFIC_QUALITY_FORECASTS"):
        monkeypatch.delenv(name, raising=False)


def _family(name: str, platform: Settings | None = None):  # noqa: ANN202 - the family's own model
    model = specs()[name].settings
    assert model is not None
    return (platform or Settings()).family(model)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_name_still_works_with_a_deprecation_warning(old: str, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    family, field, raw, value = RENAMED[old]
    monkeypatch.setenv(old, raw)
    with pytest.warns(DeprecationWarning, match=old), caplog.at_level(logging.WARNING, "service.settings"):
        assert getattr(_family(family), field) == value
    new = specs()[family].settings.env_name(field)
    assert new == f"SERVICE_{family.upper()}_{field.upper()}"
    assert [r.getMessage() for r in caplog.records] == [f"{old} is deprecated and will be removed: set {new} "
                                                        "instead"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning, no second log line
        assert getattr(_family(family), field) == value
    assert len(caplog.records) == 1


def test_the_new_name_wins_over_the_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_QUALITY_FORECASTS", "5")
    monkeypatch.setenv("SERVICE_TRAFFIC_QUALITY_FORECASTS", "11")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old name is not used: nothing to warn about
        assert _family("traffic").quality_forecasts == 11


def test_a_name_that_had_the_prefix_keeps_it_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_WELD_FAISS_MIN", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _family("weld").faiss_min == 3


def test_settings_arguments_reach_the_family_by_either_name() -> None:
    """Code that builds `Settings` itself (tests, Ray's `settings`) passes the variable's name without SERVICE_."""
    assert _family("weld", Settings(weld_faiss_min=2)).faiss_min == 2
    assert _family("traffic", Settings(traffic_quality_forecasts=4)).quality_forecasts == 4
    with pytest.warns(DeprecationWarning, match="gallery_url"):
        assert _family("weld", Settings(gallery_url="sqlite:///g.db")).gallery_url == "sqlite:///g.db"


def test_a_bad_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_WATER_QUALITY_SELFCHECK_FRACTION", "2")
    with pytest.raises(ValueError, match="quality_selfcheck_fraction"):
        _family("water")


def test_the_platform_settings_hold_no_family_field() -> None:
    families = set(specs())
    assert not {f for f in Settings.model_fields for name in families if name in f.split("_")}
