"""Traffic forecasting family: `POST /traffic/forecast` on a model exported from training/traffic."""

from service.families import lazy_family

__getattr__ = lazy_family(__name__, "service.families.traffic.family:TrafficFamily")
