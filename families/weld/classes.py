"""The 12 weld classes of the Intel robotic welding dataset and tolerant matching of category names."""

from __future__ import annotations

import re

CLASSES: tuple[str, ...] = (
    "Good",
    "Excessive_Convexity",
    "Undercut",
    "Lack_of_Fusion",
    "Porosity_w_Excessive_Penetration",
    "Porosity",
    "Spatter",
    "Burnthrough",
    "Excessive_Penetration",
    "Crater_Cracks",
    "Warping",
    "Overlap",
)


def _key(name: str) -> str:
    # Case-, space-, underscore- and punctuation-insensitive ("Lack of fusion", "lack_of_fusion", "BURN-THROUGH").
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(c): c for c in CLASSES}
# Spellings seen in public copies of the dataset ("good_weld", "porosity w/ excessive penetration").
_BY_KEY.update({"goodweld": "Good", "porositywithexcessivepenetration": "Porosity_w_Excessive_Penetration"})


def match_class(name: str) -> str | None:
    """Canonical class name for a category string, or None when it is not one of the 12 classes."""
    return _BY_KEY.get(_key(str(name)))
