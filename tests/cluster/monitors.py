"""The chart's ServiceMonitor, PodMonitor and PrometheusRule as Prometheus configuration: kubernetes_sd scrape
configs and rule groups, translated as the Prometheus Operator translates them (its job names, selectors by
relabelling, port names, honorLabels, intervals), for the subset of the monitoring.coreos.com fields the chart
uses. A field outside that subset raises, so a chart change the translation does not cover fails loudly.

Until the Prometheus Operator itself runs in the test cluster (issue 24), this is what turns the chart's
objects into what a kube-prometheus-stack Prometheus would scrape.
"""

from __future__ import annotations

import re
from pathlib import Path

POD_MONITOR_FIELDS = {"namespaceSelector", "selector", "podMetricsEndpoints"}
SERVICE_MONITOR_FIELDS = {"selector", "endpoints", "namespaceSelector"}
ENDPOINT_FIELDS = {"port", "interval", "honorLabels", "path"}


def label_name(key: str) -> str:
    """A Kubernetes label key as kubernetes_sd's meta label suffix (app.kubernetes.io/name -> app_kubernetes_io_name)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _check(fields: dict, allowed: set[str], what: str) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"{what} uses {sorted(unknown)}, which tests/cluster/monitors.py does not translate")


def _namespaces(monitor: dict) -> dict:
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return {}
    return {"namespaces": {"names": selector.get("matchNames") or [monitor["metadata"]["namespace"]]}}


def _keep_labels(role: str, match_labels: dict) -> list[dict]:
    return [
        {"source_labels": [f"__meta_kubernetes_{role}_label_{label_name(k)}"], "regex": re.escape(str(v)), "action": "keep"}
        for k, v in sorted(match_labels.items())
    ]


def _endpoint_settings(endpoint: dict, what: str) -> dict:
    _check(endpoint, ENDPOINT_FIELDS, what)
    out = {"honor_labels": bool(endpoint.get("honorLabels", False)), "metrics_path": endpoint.get("path", "/metrics")}
    if "interval" in endpoint:
        out["scrape_interval"] = endpoint["interval"]
    return out


def _jobs(monitor: dict, kind: str, endpoints_field: str, role: str, sd: dict, relabel) -> list[dict]:
    """One scrape job per endpoint of the monitor: its name, settings and discovery as the operator writes them;
    ``relabel(endpoint)`` gives the kind's own selection and target labels, before the shared ones."""
    meta = monitor["metadata"]
    return [
        {
            "job_name": f"{kind[0].lower()}{kind[1:]}/{meta['namespace']}/{meta['name']}/{i}",
            **_endpoint_settings(endpoint, f"{kind} {meta['name']} endpoint {i}"),
            "kubernetes_sd_configs": [{"role": role, **sd, **_namespaces(monitor)}],
            "relabel_configs": [
                *relabel(endpoint),
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "endpoint", "replacement": endpoint["port"]},
            ],
        }
        for i, endpoint in enumerate(monitor["spec"][endpoints_field])
    ]


def _keep_port(meta_label: str, endpoint: dict) -> dict:
    return {"source_labels": [meta_label], "regex": re.escape(endpoint["port"]), "action": "keep"}


def pod_monitor_jobs(monitor: dict, sd: dict) -> list[dict]:
    spec, meta = monitor["spec"], monitor["metadata"]
    _check(spec, POD_MONITOR_FIELDS, f"PodMonitor {meta['name']}")
    return _jobs(
        monitor,
        "PodMonitor",
        "podMetricsEndpoints",
        "pod",
        sd,
        lambda endpoint: [
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"},
            *_keep_labels("pod", spec["selector"]["matchLabels"]),
            _keep_port("__meta_kubernetes_pod_container_port_name", endpoint),
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        ],
    )


def service_monitor_jobs(monitor: dict, sd: dict) -> list[dict]:
    """Discovered through EndpointSlices, as the Prometheus Operator does with ``serviceDiscoveryRole: EndpointSlice``
    (v1 Endpoints are deprecated since Kubernetes 1.33, and the test cluster runs no Endpoints controller)."""
    spec, meta = monitor["spec"], monitor["metadata"]
    _check(spec, SERVICE_MONITOR_FIELDS, f"ServiceMonitor {meta['name']}")
    return _jobs(
        monitor,
        "ServiceMonitor",
        "endpoints",
        "endpointslice",
        sd,
        lambda endpoint: [
            *_keep_labels("service", spec["selector"]["matchLabels"]),
            _keep_port("__meta_kubernetes_endpointslice_port_name", endpoint),
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},  # the operator's default job label
        ],
    )


def prometheus_config(objects: list[dict], select: dict, server: str, ca: Path, token: str, rules_file: Path) -> dict:
    """A Prometheus configuration scraping what the chart's monitors select, through the API server at ``server``,
    and evaluating its PrometheusRule (written to ``rules_file``). Like a Prometheus resource's monitor and rule
    selectors, only objects carrying the labels ``select`` are taken (kube-prometheus-stack selects on ``release``)."""
    import yaml

    sd = {"api_server": server, "tls_config": {"ca_file": str(ca)}, "authorization": {"credentials": token}}
    jobs, groups = [], []
    for obj in objects:
        if not select.items() <= (obj["metadata"].get("labels") or {}).items():
            continue
        if obj["kind"] == "PodMonitor":
            jobs += pod_monitor_jobs(obj, sd)
        elif obj["kind"] == "ServiceMonitor":
            jobs += service_monitor_jobs(obj, sd)
        elif obj["kind"] == "PrometheusRule":
            groups += obj["spec"]["groups"]
    rules_file.write_text(yaml.safe_dump({"groups": groups}))
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": jobs,
    }
