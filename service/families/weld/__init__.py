"""Weld defect family: four-modality embedding + k-NN classification (POST /weld/classify, /weld/gallery)."""

from service.families import lazy_family

__getattr__ = lazy_family(__name__, "service.families.weld.family:WeldFamily")
