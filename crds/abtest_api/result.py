"""``status.result``: the part of ``result.json`` that the analysis writes into the ABTest's status.

The analysis projects ``result.json`` with :func:`status_result` and validates it before the patch;
the operator validates what it reads before turning it into metrics (bounded labels, numbers that are
numbers). The schema is the CRD's ``status.result``: one declaration, checked by the API server too.
"""

from __future__ import annotations

from abtest_api.errors import UserError

P_FLOOR = 1e-300  # smaller p-values are reported as this bound, never as 0


def format_p(p: float, bounded: bool = False) -> str:
    """A p-value as people read it; one below the floor is a bound ("< 1e-300"), never 0."""
    if bounded:
        return f"< {P_FLOOR:.0e}"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"


def status_result(result: dict) -> dict:
    """The small camelCase summary of ``result.json`` that goes into ``status.result``."""
    best = min(result["comparisons"], key=lambda c: c["p_value_adjusted"])
    omnibus = result.get("omnibus")
    return {
        "winner": result["winner"] or "none",
        "verdict": result["verdict"],
        "pValue": best["p_value_adjusted_text"],
        "hypothesis": result["hypothesis"]["name"],
        **({"margin": result["hypothesis"]["margin"]} if result["hypothesis"]["margin"] is not None else {}),
        "significant": any(c["significant"] for c in result["comparisons"]),
        "alpha": result["alpha"],
        "method": result["method"],
        "n": result["n"],
        **({"skipped": result["skipped"]} if result.get("skipped") else {}),
        "models": {
            n: {"accuracy": m["accuracy"], "throughput": m["throughput"], "latencyMsP50": m["latency_ms_p50"], "runsAs": runs_as(m)}
            for n, m in result["models"].items()
        },
        "comparisons": [
            {
                "a": c["a"],
                "b": c["b"],
                "n01": c["n01"],
                "n10": c["n10"],
                "pValue": c["p_value"],
                "pValueAdjusted": c["p_value_adjusted"],
                "significant": c["significant"],
                "accuracyDiff": c["accuracy_diff"],
                "ci": c["ci"],
                "ciLevel": c["ci_level"],
                "method": c["method"],
                "decision": c["decision"],
                **({"marginPValue": c["margin_test"]["p_value_adjusted"]} if "margin_test" in c else {}),
            }
            for c in result["comparisons"]
        ],
        "omnibus": None if not omnibus else {"test": "cochrans_q", "statistic": omnibus["statistic"], "pValue": omnibus["p_value"]},
        "warnings": result["warnings"],
        **({"concurrency": status_concurrency(result["concurrency"])} if result.get("concurrency") else {}),
        **(
            {
                "stoppedEarly": result["sequential"]["stopped_early"],
                "samplesUsed": result["sequential"]["samples_used"],
                "alphaSpent": result["sequential"]["alpha_spent"],
            }
            if result.get("sequential")
            else {}
        ),
    }


def status_concurrency(block: dict) -> dict:
    """Whether the models' timed loops ran together (result.json's ``concurrency``, without the per-model windows)."""
    return {"concurrent": block["concurrent"], "startSkewSeconds": block["start_skew_seconds"], "overlap": block["overlap"]}


def status_sequential(result: dict) -> dict:
    """``status.sequential``: where a group-sequential test stands after its latest look."""
    seq = result["sequential"]
    return {
        "looks": seq["looks"],
        "spending": seq["spending"],
        "look": seq["look"],
        "samplesUsed": seq["samples_used"],
        "samplesTotal": seq["samples_total"],
        "alphaSpent": seq["alpha_spent"],
        "boundary": seq["boundary"],
        "boundaries": seq["boundaries"],
        "stoppedEarly": seq["stopped_early"],
        "statistics": [{"a": c["a"], "b": c["b"], "z": c["z"], "crossed": c["significant"]} for c in result["comparisons"]],
    }


def check_status_result(value: dict) -> dict:
    """``value`` when it fits the CRD's ``status.result`` schema; a UserError naming the first bad field otherwise."""
    return _check("result", value)


def check_status_sequential(value: dict) -> dict:
    return _check("sequential", value)


def _check(field: str, value: dict) -> dict:
    from abtest_api import crd  # jsonschema and the CRD's YAML: only when a status is checked, not for every analysis

    errors = sorted(crd.validator("status", field).iter_errors(value), key=lambda e: crd.error_path(e))
    if errors:
        raise UserError(f"status.{field} is invalid: {crd.error_path(errors[0])}: {errors[0].message}")
    return value


def runs_as(model: dict) -> str:
    """What a model ran as: an artefact's format, else its precision (result.json's model summary)."""
    fmt = model.get("format", "pytorch")
    return model.get("precision", "fp32") if fmt == "pytorch" else fmt
