"""Generate the provisioned Grafana dashboards (docker/grafana/dashboards/*.json).

The JSON files are committed (Grafana reads them as they are); this script is their source so that
selectors, units and layout stay consistent. After an edit:

    python docker/grafana/generate_dashboards.py          # rewrite the JSON files
    python docker/grafana/generate_dashboards.py --check  # exit 1 when a committed file is stale

Metric names and labels are those of service/metrics.py (docs/architecture.md, "Metrics").
Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml

# Selectors shared by every query; $instance / $model are the dashboards' template variables.
SVC = 'job="inference", instance=~"$instance"'
MODEL = f'{SVC}, model=~"$model"'
# End-to-end latency of model requests (the metrics scrape itself and health probes carry model="").
HTTP_MODEL = f'{MODEL}, model!=""'
QUANTILES = (0.5, 0.95, 0.99)
W = "$__rate_interval"


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    options: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def quantiles(metric: str, selector: str, by: str, legend: str) -> list[Target]:
    """p50/p95/p99 from a histogram: histogram_quantile over the rate of its buckets, by `le`."""
    return [
        Target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{W}])))",
            f"{legend} p{round(q * 100)}",
        )
        for q in QUANTILES
    ]


def zero_filled(numerator: str, denominator: str, by: str) -> str:
    """`numerator / denominator`, where an absent numerator (no 5xx seen yet) reads as 0, not no data."""
    return (
        f"(sum by ({by}) ({numerator}) or sum by ({by}) ({denominator}) * 0)"
        f" / sum by ({by}) ({denominator})"
    )


def rejections(reason: str) -> str:
    return f'sum by (model) (rate(inference_rejections_total{{{MODEL}, reason="{reason}"}}[{W}]))'


def requests_count(selector: str) -> str:
    return f"rate(inference_request_duration_seconds_count{{{selector}}}[{W}])"


# ---- dashboards -----------------------------------------------------------------------------------
def overview() -> list[Row]:
    return [
        Row("Latency (end to end, HTTP)", [
            Panel("Latency p50 / p95 / p99 per endpoint",
                  "histogram_quantile over rate(inference_request_duration_seconds_bucket) by endpoint.",
                  quantiles("inference_request_duration_seconds", HTTP_MODEL, "endpoint", "{{endpoint}}"),
                  unit="s"),
            Panel("Latency p50 / p95 / p99 per model",
                  "histogram_quantile over rate(inference_request_duration_seconds_bucket) by model.",
                  quantiles("inference_request_duration_seconds", HTTP_MODEL, "model", "{{model}}"),
                  unit="s"),
            Panel("p99 latency per model version",
                  "Compare versions during a rollout (the old version serves until the new one is warm).",
                  [Target("histogram_quantile(0.99, sum by (model, version, le) "
                          f"(rate(inference_request_duration_seconds_bucket{{{HTTP_MODEL}}}[{W}])))",
                          "{{model}} v{{version}}")],
                  unit="s", width=24),
        ]),
        Row("Traffic and errors", [
            Panel("Request rate per endpoint", "HTTP requests per second, all status codes.",
                  [Target(f"sum by (endpoint) ({requests_count(HTTP_MODEL)})", "{{endpoint}}")],
                  unit="reqps"),
            Panel("Request rate per model", "HTTP requests per second, all status codes.",
                  [Target(f"sum by (model) ({requests_count(HTTP_MODEL)})", "{{model}}")], unit="reqps"),
            Panel("Responses by status code", "HTTP responses per second by status code.",
                  [Target(f"sum by (code) ({requests_count(HTTP_MODEL)})", "{{code}}")], unit="reqps",
                  width=8),
            Panel("Server error ratio per model",
                  "Share of requests answered 5xx other than 503 (not ready) and 504 (deadline); "
                  "alert InferenceHighErrorRate fires above 5%.",
                  [Target(zero_filled(requests_count(f'{HTTP_MODEL}, code=~"5..", code!~"50[34]"'),
                                      requests_count(HTTP_MODEL), "model"), "{{model}}")],
                  unit="percentunit", width=8),
            Panel("Client error ratio (4xx) per endpoint",
                  "Share of requests rejected as invalid (400/413/415/422) or unknown (404).",
                  [Target(zero_filled(requests_count(f'{HTTP_MODEL}, code=~"4..", code!="429"'),
                                      requests_count(HTTP_MODEL), "endpoint"), "{{endpoint}}")],
                  unit="percentunit", width=8),
            Panel("429 rate (queue full) per model",
                  "Requests rejected at once because the batcher queue was full (HTTP 429 + Retry-After); "
                  "alert InferenceSustainedQueueFull.",
                  [Target(rejections("queue_full"), "{{model}}")], unit="reqps", width=8),
            Panel("504 rate (deadline) per model",
                  "Requests whose deadline passed before their batch started (HTTP 504, never computed).",
                  [Target(rejections("deadline"), "{{model}}")], unit="reqps", width=8),
            Panel("Batcher outcomes", "Requests leaving the batcher per second, by outcome.",
                  [Target(f"sum by (outcome) (rate(inference_requests_total{{{MODEL}}}[{W}]))",
                          "{{outcome}}")], unit="reqps", width=8),
            Panel("HTTP requests in flight", "Requests being handled right now, per instance.",
                  [Target(f"sum by (instance) (http_requests_in_flight{{{SVC}}})", "{{instance}}")],
                  width=12),
            Panel("Scrape target up", "1 when Prometheus can scrape the instance; alert InferenceTargetDown.",
                  [Target(f"up{{{SVC}}}", "{{instance}}")], width=12,
                  defaults={"min": 0, "max": 1}),
        ]),
        Row("Models", [
            Panel("Model versions loaded",
                  "model_ready per version: 1 serving, 0 loading / unloaded / failed; "
                  "alert InferenceModelNotReady when no version of a model serves.",
                  [Target(f"max by (model, version) (model_ready{{{MODEL}}})", "{{model}} v{{version}}",
                          instant=True, fmt="table")],
                  kind="table", width=12),
            Panel("Model load time (open + warm-up)",
                  "Seconds from opening the runtimes to the end of warm-up, per version (mean over the loads "
                  "of every replica).",
                  [Target(f"sum by (model, version) (model_load_duration_seconds_sum{{{MODEL}}})"
                          f" / sum by (model, version) (model_load_duration_seconds_count{{{MODEL}}})",
                          "{{model}} v{{version}}", instant=True)],
                  kind="bargauge", unit="s", width=12,
                  options={"displayMode": "basic", "orientation": "horizontal",
                           "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}),
        ]),
    ]


def batching() -> list[Row]:
    by = "model, queue"
    return [
        Row("Batches", [
            Panel("Batch size distribution",
                  "Rows per executed batch (heatmap of inference_batch_size buckets).",
                  [Target(f"sum by (le) (increase(inference_batch_size_bucket{{{MODEL}}}[{W}]))", "{{le}}",
                          fmt="heatmap")],
                  kind="heatmap", width=12,
                  options={"calculate": False, "yAxis": {"unit": "short"},
                           "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges"}}),
            Panel("Batch size p50 / p95 per model and queue", "From the inference_batch_size histogram.",
                  [Target(f"histogram_quantile({q}, sum by ({by}, le) "
                          f"(rate(inference_batch_size_bucket{{{MODEL}}}[{W}])))",
                          f"{{{{model}}}}/{{{{queue}}}} p{round(q * 100)}") for q in (0.5, 0.95)],
                  width=12),
            Panel("Mean batch size per model and queue", "Rows per batch, averaged over the window.",
                  [Target(f"sum by ({by}) (rate(inference_batch_size_sum{{{MODEL}}}[{W}]))"
                          f" / sum by ({by}) (rate(inference_batch_size_count{{{MODEL}}}[{W}]))",
                          "{{model}}/{{queue}}")], width=12),
            Panel("Batches per second", "Executed batches per second.",
                  [Target(f"sum by ({by}) (rate(inference_batch_size_count{{{MODEL}}}[{W}]))",
                          "{{model}}/{{queue}}")], unit="ops", width=12),
        ]),
        Row("Queues and compute", [
            Panel("Queue depth", "Requests waiting in each batcher queue.",
                  [Target(f"sum by ({by}) (inference_queue_depth{{{MODEL}}})", "{{model}}/{{queue}}")],
                  width=8),
            Panel("Queue wait p50 / p95 / p99",
                  "Time from enqueue to the start of the request's batch.",
                  quantiles("inference_queue_wait_seconds", MODEL, by, "{{model}}/{{queue}}"), unit="s",
                  width=8),
            Panel("Compute time per batch p50 / p95 / p99", "Runtime execution time of one batch.",
                  quantiles("inference_compute_seconds", MODEL, by, "{{model}}/{{queue}}"), unit="s",
                  width=8),
            Panel("Rejections by reason",
                  "queue_full = 429, deadline = 504, disconnected = client gone, shutting_down = draining.",
                  [Target(f"sum by (model, reason) (rate(inference_rejections_total{{{MODEL}}}[{W}]))",
                          "{{model}} {{reason}}")], unit="reqps", width=24),
        ]),
    ]


GPU = f'{SVC}, device=~"$device"'


def gpu() -> list[Row]:
    return [
        Row("GPU (NVML, per device)", [
            Panel("GPU memory used", "gpu_memory_used_bytes per device; dashed: device total.",
                  [Target(f"sum by (instance, device) (gpu_memory_used_bytes{{{GPU}}})",
                          "{{instance}} gpu{{device}} used"),
                   Target(f"sum by (instance, device) (gpu_memory_total_bytes{{{GPU}}})",
                          "{{instance}} gpu{{device}} total")],
                  unit="bytes"),
            Panel("GPU memory used fraction", "Used / total memory per device.",
                  [Target(f"sum by (instance, device) (gpu_memory_used_bytes{{{GPU}}})"
                          f" / sum by (instance, device) (gpu_memory_total_bytes{{{GPU}}})",
                          "{{instance}} gpu{{device}}")],
                  unit="percentunit", defaults={"min": 0, "max": 1}),
            Panel("GPU utilisation", "Fraction of time a kernel ran over NVML's last sample period.",
                  [Target(f"avg by (instance, device) (gpu_utilization_ratio{{{GPU}}})",
                          "{{instance}} gpu{{device}}")],
                  unit="percentunit", width=24, defaults={"min": 0, "max": 1}),
        ]),
    ]


def forecast_ratio(numerator: str, predictor: str, by: str) -> str:
    """Sum of a per-point error counter over the points scored, per `by` (MAE, MSE or MAPE)."""
    sel = f'{MODEL}, predictor="{predictor}"'
    return (f"sum by ({by}) (rate({numerator}{{{sel}}}[{W}]))"
            f" / sum by ({by}) (rate(quality_forecast_points_total{{{sel}}}[{W}]))")


def drift_score(window: str = W, sel: str = MODEL) -> str:
    """(live mean - training mean) / training std per model, version and statistic (service/quality/drift.py)."""
    by = "model, version, statistic"
    return (f"(sum by ({by}) (rate(quality_input_statistic_sum_total{{{sel}}}[{window}]))"
            f" / sum by ({by}) (rate(quality_input_statistic_count_total{{{sel}}}[{window}]))"
            f" - max by ({by}) (quality_training_statistic_mean{{{sel}}}))"
            f" / max by ({by}) (quality_training_statistic_std{{{sel}}})")


def selfcheck_mae() -> str:
    """Water self-check: mean |reconstruction - hidden value| (normalised) per model, version and modality."""
    by = "model, version, modality"
    return (f"sum by ({by}) (rate(quality_selfcheck_abs_error_total{{{MODEL}}}[{W}]))"
            f" / sum by ({by}) (rate(quality_selfcheck_points_total{{{MODEL}}}[{W}]))")


def quality() -> list[Row]:
    horizon = "model, version, horizon"
    return [
        Row("Traffic: forecast error from ground truth (POST /traffic/observations)", [
            Panel("MAE per horizon step (model vs last value)",
                  "Masked mean absolute error (mph) of the served forecasts per horizon step (h1 = 5 min ahead), "
                  "beside the last-value baseline on the same points.",
                  [Target(forecast_ratio("quality_forecast_abs_error_total", "model", horizon),
                          "{{model}} v{{version}} h{{horizon}}"),
                   Target(forecast_ratio("quality_forecast_abs_error_total", "last_value", horizon),
                          "{{model}} v{{version}} h{{horizon}} last value")], unit="short"),
            Panel("RMSE per horizon step", "Root mean squared error (mph) per horizon step.",
                  [Target(f"sqrt({forecast_ratio('quality_forecast_squared_error_total', 'model', horizon)})",
                          "{{model}} v{{version}} h{{horizon}}")], unit="short"),
            Panel("MAPE per horizon step", "Mean absolute percentage error per horizon step (actual > 0 only).",
                  [Target(forecast_ratio("quality_forecast_abs_percentage_error_total", "model", horizon),
                          "{{model}} v{{version}} h{{horizon}}")], unit="percentunit"),
            Panel("Skill vs naive (1 - MAE / MAE of last value)",
                  "Above 0: the model beats repeating each sensor's last reading; alert "
                  "TrafficForecastWorseThanNaive when below 0 for 30 minutes.",
                  [Target(f"1 - {forecast_ratio('quality_forecast_abs_error_total', 'model', 'model, version')}"
                          f" / ({forecast_ratio('quality_forecast_abs_error_total', 'last_value', 'model, version')})",
                          "{{model}} v{{version}}")], unit="percentunit"),
            Panel("Observed readings by outcome",
                  "matched = scored; duplicate = already scored; late = its forecasts were evicted (TTL / size); "
                  "unmatched = no kept forecast targets it; missing = 0 / null.",
                  [Target(f"sum by (model, outcome) (rate(quality_observations_total{{{MODEL}}}[{W}]))",
                          "{{model}} {{outcome}}")], unit="reqps", width=12),
            Panel("Forecasts kept for scoring", "Served forecast windows waiting for their actuals, per version.",
                  [Target(f"sum by (model, version) (quality_forecasts_stored{{{MODEL}}})",
                          "{{model}} v{{version}}")], width=12),
        ]),
        Row("Weld: out of distribution", [
            Panel("OOD share (recent samples)",
                  "Share of the last classified samples whose nearest gallery distance exceeds the gallery's "
                  "leave-one-out p99 (about 1% in distribution); alert WeldOutOfDistribution above 10%.",
                  [Target(f"max by (model, version) (quality_ood_ratio{{{MODEL}}})", "{{model}} v{{version}}")],
                  unit="percentunit", width=8, defaults={"min": 0, "max": 1}),
            Panel("Nearest-neighbour distance p50 / p95 per predicted class, and the OOD threshold",
                  "From quality_nearest_distance; dashed: quality_ood_threshold.",
                  [*[Target(f"histogram_quantile({q}, sum by (model, class, le) "
                            f"(rate(quality_nearest_distance_bucket{{{MODEL}}}[{W}])))",
                            f"{{{{model}}}} {{{{class}}}} p{round(q * 100)}") for q in (0.5, 0.95)],
                   Target(f"max by (model, metric) (quality_ood_threshold{{{MODEL}}})", "{{model}} threshold")],
                  width=16),
            Panel("Vote margin p50 per predicted class", "Top vote share minus the runner-up's (0 = a tie).",
                  [Target(f"histogram_quantile(0.5, sum by (model, class, le) "
                          f"(rate(quality_vote_margin_bucket{{{MODEL}}}[{W}])))", "{{model}} {{class}}")],
                  unit="percentunit", width=12),
            Panel("Predicted classes", "Classified samples per second by predicted class.",
                  [Target(f"sum by (model, class) (rate(quality_predictions_total{{{MODEL}}}[{W}]))",
                          "{{model}} {{class}}")], unit="reqps", width=12),
        ]),
        Row("Water: self-check (a sampled share of requests, visible values hidden and reconstructed)", [
            Panel("Self-check MAE per modality (normalised units)",
                  "Mean |reconstruction - hidden value| in training standard deviations, on the values the "
                  "self-check hid (setting quality_water_selfcheck_fraction; docs/quality.md).",
                  [Target(selfcheck_mae(), "{{model}} v{{version}} {{modality}}")], width=12),
            Panel("Self-checked values per second", "Hidden values reconstructed by the self-check, per modality.",
                  [Target(f"sum by (model, modality) (rate(quality_selfcheck_points_total{{{MODEL}}}[{W}]))",
                          "{{model}} {{modality}}")], width=12),
        ]),
        Row("Image codec: rate and distortion per level", [
            Panel("Bits per pixel p50 / p95 per level", "quality_codec_bits_per_pixel, every compression.",
                  [Target(f"histogram_quantile({q}, sum by (model, level, le) "
                          f"(rate(quality_codec_bits_per_pixel_bucket{{{MODEL}}}[{W}])))",
                          f"{{{{model}}}} {{{{level}}}} p{round(q * 100)}") for q in (0.5, 0.95)], width=12),
            Panel("Reconstruction PSNR p50 / p5 per level (dB)",
                  "quality_codec_psnr_db on a sampled share of compressions (quality_codec_psnr_fraction), "
                  "decoded by the encoder from its own stream.",
                  [Target(f"histogram_quantile({q}, sum by (model, level, le) "
                          f"(rate(quality_codec_psnr_db_bucket{{{MODEL}}}[{W}])))",
                          f"{{{{model}}}} {{{{level}}}} p{round(q * 100)}") for q in (0.5, 0.05)], width=12),
        ]),
        Row("Input drift against the training statistics (manifest)", [
            Panel("Drift: (live mean - training mean) / training std",
                  "Per statistic (traffic: missing_fraction, mean_speed; water: missing_fraction_<modality>); "
                  "alert InputDrift above 0.5 in size "
                  "for 30 minutes.",
                  [Target(drift_score(), "{{model}} v{{version}} {{statistic}}")], width=12),
            Panel("Live vs training mean", "The live mean over the window, and the training mean (dashed).",
                  [Target(f"sum by (model, statistic) (rate(quality_input_statistic_sum_total{{{MODEL}}}[{W}]))"
                          f" / sum by (model, statistic) (rate(quality_input_statistic_count_total{{{MODEL}}}[{W}]))",
                          "{{model}} {{statistic}} live"),
                   Target(f"max by (model, statistic) (quality_training_statistic_mean{{{MODEL}}})",
                          "{{model}} {{statistic}} training")], width=12),
        ]),
    ]


def by_role(numerator: str, denominator: str, extra: str = "") -> str:
    """A per-version ratio of two quality counters joined to the version's role in a running rollout
    (rollout_version_role is 1 for its baseline and candidate): one line per version, labelled by role."""
    by, sel = "model, version", MODEL + (f", {extra}" if extra else "")
    return (f"(sum by ({by}) (rate({numerator}{{{sel}}}[{W}])) / sum by ({by}) (rate({denominator}{{{sel}}}[{W}])))"
            f" * on ({by}) group_left (role) max by ({by}, role) (rollout_version_role{{{MODEL}}} == 1)")


def rollout() -> list[Row]:
    """Issue 31 (docs/rollouts.md): a candidate beside its baseline on requests, errors, latency and quality."""
    path = "model, version, role, path"
    fc = 'predictor="model"'
    return [
        Row("Rollout state (PUT /admin/rollouts/{model})", [
            Panel("Rollout running (by mode)", "1 while a rollout runs for the model, by mode (shadow | canary).",
                  [Target(f"max by (model, mode) (rollout_active{{{MODEL}}})", "{{model}} {{mode}}")], width=8),
            Panel("Canary percent", "Share of requests (0-100) the candidate answers; 0 in shadow mode.",
                  [Target(f"max by (model) (rollout_percent{{{MODEL}}})", "{{model}}")], unit="percent", width=8),
            Panel("Decisions (last hour)", "start, update, promote, end, auto_promote, auto_rollback.",
                  [Target(f"sum by (model, decision) (increase(rollout_decisions_total{{{MODEL}}}[1h]))",
                          "{{model}} {{decision}}")], width=8),
        ]),
        Row("Baseline vs candidate: requests, errors, latency", [
            Panel("Requests per second by version and path",
                  "live: answered the client (canary splits them); shadow: copies run on the candidate.",
                  [Target(f"sum by ({path}) (rate(rollout_requests_total{{{MODEL}}}[{W}]))",
                          "{{model}} v{{version}} {{role}} {{path}}")], unit="reqps"),
            Panel("Error ratio (5xx) by version and path", "Share of the version's requests that failed.",
                  [Target(zero_filled(f'rate(rollout_requests_total{{{MODEL}, outcome="error"}}[{W}])',
                                      f"rate(rollout_requests_total{{{MODEL}}}[{W}])", path),
                          "{{model}} v{{version}} {{role}} {{path}}")], unit="percentunit"),
            Panel("Latency p50 / p99 by version and path",
                  "live: end to end; shadow: the copy's duration on the candidate.",
                  [Target(f"histogram_quantile({q}, sum by ({path}, le) "
                          f"(rate(rollout_request_duration_seconds_bucket{{{MODEL}}}[{W}])))",
                          f"{{{{model}}}} v{{{{version}}}} {{{{role}}}} {{{{path}}}} p{round(q * 100)}")
                   for q in (0.5, 0.99)], unit="s"),
            Panel("Shadow copies dropped per second, and the queue",
                  "queue_full: the candidate fell behind; stale: waited too long for live requests; busy: the "
                  "work pool was over half full; ended: the rollout ended first.",
                  [Target(f"sum by (model, reason) (rate(rollout_shadow_dropped_total{{{MODEL}}}[{W}]))",
                          "{{model}} dropped {{reason}}"),
                   Target(f"max by (model) (rollout_shadow_queue_depth{{{MODEL}}})", "{{model}} queued")]),
        ]),
        Row("Baseline vs candidate: model quality (live)", [
            Panel("Traffic: forecast MAE from observations per version",
                  "Mean absolute error (mph) over every horizon step; alert RolloutCandidateWorseForecastError "
                  "when the candidate's is 5 % above the baseline's for 30 minutes.",
                  [Target(by_role("quality_forecast_abs_error_total", "quality_forecast_points_total", fc),
                          "{{model}} v{{version}} {{role}}")]),
            Panel("Shadow: mean |candidate - baseline| of the answers",
                  "Traffic: mph between the two versions' forecasts of the same request.",
                  [Target(f"sum by (model, version) (rate(rollout_shadow_abs_difference_total{{{MODEL}}}[{W}])) / "
                          f"sum by (model, version) (rate(rollout_shadow_compared_total{{{MODEL}}}[{W}]))",
                          "{{model}} v{{version}}")]),
            Panel("Weld: OOD share per version", "Share of classified samples out of the gallery's distribution.",
                  [Target(by_role("quality_ood_samples_total", "quality_predictions_total"),
                          "{{model}} v{{version}} {{role}}")], unit="percentunit"),
            Panel("Weld: agreement share (shadow)", "Share of compared requests where both versions predicted the "
                  "same classes.",
                  [Target(f"sum by (model, version) (rate(rollout_shadow_agreed_total{{{MODEL}}}[{W}])) / "
                          f"sum by (model, version) (rate(rollout_shadow_compared_total{{{MODEL}}}[{W}]))",
                          "{{model}} v{{version}}")], unit="percentunit"),
            Panel("Codec: PSNR per version", "Mean PSNR (dB) of the sampled reconstructions.",
                  [Target(by_role("quality_codec_psnr_db_sum", "quality_codec_psnr_db_count"),
                          "{{model}} v{{version}} {{role}}")]),
            Panel("Codec: bits per pixel per version", "Mean compressed bits per pixel.",
                  [Target(by_role("quality_codec_bits_per_pixel_sum", "quality_codec_bits_per_pixel_count"),
                          "{{model}} v{{version}} {{role}}")]),
            Panel("Water: self-check MAE per version", "Mean |reconstruction - hidden value| (normalised units).",
                  [Target(by_role("quality_selfcheck_abs_error_total", "quality_selfcheck_points_total"),
                          "{{model}} v{{version}} {{role}}")]),
        ]),
    ]


def variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


INSTANCE_VAR = variable("instance", "Instance", 'label_values(up{job="inference"}, instance)')
MODEL_VAR = variable("model", "Model",
                     'label_values(model_ready{job="inference", instance=~"$instance"}, model)')
DEVICE_VAR = variable("device", "GPU",
                      'label_values(gpu_memory_total_bytes{job="inference", instance=~"$instance"}, device)')

DASHBOARDS = {
    "serving-overview": ("Serving: latency, traffic and errors", overview, [INSTANCE_VAR, MODEL_VAR]),
    "serving-batching": ("Serving: batching and queues", batching, [INSTANCE_VAR, MODEL_VAR]),
    "serving-gpu": ("Serving: GPU", gpu, [INSTANCE_VAR, DEVICE_VAR]),
    "model-quality": ("Model quality: forecast error, OOD and drift", quality, [INSTANCE_VAR, MODEL_VAR]),
    "rollout": ("Rollout: baseline vs candidate", rollout, [INSTANCE_VAR, MODEL_VAR]),
}


# ---- Grafana JSON ---------------------------------------------------------------------------------
def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend,
         "instant": t.instant, "range": not t.instant, "format": t.fmt, "editorMode": "code"}
        for i, t in enumerate(panel.targets)
    ]
    options = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                          "calcs": ["mean", "max", "lastNotNull"]},
               "tooltip": {"mode": "multi", "sort": "desc"}} if panel.kind == "timeseries" else {}
    options.update(panel.options)
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets, "options": options,
        "fieldConfig": {"defaults": {"unit": panel.unit, **panel.defaults}, "overrides": []},
    }


def dashboard_json(uid: str, title: str, rows: list[Row], variables: list[dict]) -> dict:
    panels: list[dict] = []
    panel_id, y = 1, 0
    for row in rows:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(panel_json(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid, "title": title, "id": None, "version": 1, "schemaVersion": 39, "editable": False,
        "tags": ["inference", "research-serving"], "timezone": "browser", "graphTooltip": 1,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "links": [{"title": "Serving dashboards", "type": "dashboards", "tags": ["research-serving"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "name": "Annotations & Alerts",
                                  "type": "dashboard"}]},
        "templating": {"list": variables},
        "panels": panels,
    }


def render() -> dict[Path, str]:
    return {
        OUT_DIR / f"{uid}.json": json.dumps(dashboard_json(uid, title, build(), variables), indent=2) + "\n"
        for uid, (title, build, variables) in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
