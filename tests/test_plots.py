"""The report's SVG plots: well-formed and escaped, and each shape where its value puts it."""

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from abtest_evaluator.analysis import plots

SVG = "{http://www.w3.org/2000/svg}"


def model_metrics(rng: np.random.Generator, k: int = 4) -> dict:
    matrix = rng.integers(0, 9, (k, k)) + np.eye(k, dtype=int) * 30
    return {
        "confusion_matrix": matrix.tolist(),
        "per_class_accuracy": [0.9, None, 0.25, 1.0][:k] + [0.5] * (k - 4),
        "latency": {"batches_ms": rng.gamma(9, 1.2, 500).tolist()},
        "reliability": {"confidence": [0.15, None, 0.55, 0.95], "accuracy": [0.1, None, 0.6, 0.9]},
        "ece": 0.0421,
    }


@pytest.fixture
def metrics():
    rng = np.random.default_rng(7)
    return {"resnet": model_metrics(rng), "<vit & co>": model_metrics(rng)}


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (0, 999, [0, 200, 400, 600, 800]),
        (3.2, 3.9, [3.2, 3.4, 3.6, 3.8]),
        (-2.5, 2.5, [-2, -1, 0, 1, 2]),
    ],
)
def test_nice_ticks_are_round_and_inside_the_range(lo, hi, ticks):
    assert plots.nice_ticks(lo, hi) == pytest.approx(ticks)


def test_every_figure_is_well_formed_svg_with_the_names_escaped(metrics):
    seq = {
        "information_fractions": [0.25, 0.5, 0.75, 1.0],
        "boundaries": [4.3, 2.9, 2.3, 2.0],
        "history": [{"look": 1, "z": {"resnet|<vit & co>": 0.8}}, {"look": 2, "z": {"resnet|<vit & co>": 3.1}}],
    }
    figures = [*plots.metric_figures(metrics).values(), plots.sequential_paths(seq)]
    for figure in figures:
        root = ET.fromstring(figure)  # raises on a bare "<" or "&" from a model name
        assert root.tag == SVG + "svg" and "http" not in figure.replace('xmlns="http://www.w3.org/2000/svg"', "")
    texts = [t.text for figure in figures for t in ET.fromstring(figure).iter(SVG + "text")]
    assert "<vit & co>" in texts and "<vit & co> (ECE 0.042)" in texts and "resnet vs <vit & co>" in texts


def test_the_confusion_matrix_image_has_each_cells_share_as_its_color():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    (image,) = ET.fromstring(plots.confusion_matrices({"m": {"confusion_matrix": matrix.tolist()}})).iter(SVG + "image")
    png = Image.open(io.BytesIO(base64.b64decode(image.get("href").removeprefix("data:image/png;base64,"))))
    cell = png.width // 3
    assert png.size == (3 * cell, 3 * cell) and cell * 3 >= 240  # whole pixels per cell, at least the drawn size
    pixels = np.asarray(png.convert("RGB"))[cell // 2 :: cell, cell // 2 :: cell].astype(float)
    share = np.array([[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])  # rows of counts / row sums (an empty row: 0)
    expected = plots.BLUES[0] + share[..., None] * (plots.BLUES[1] - plots.BLUES[0])
    assert np.abs(pixels - expected).max() <= 0.5


def test_the_confusion_matrix_writes_the_counts_of_up_to_twelve_classes(metrics):
    counts = lambda k: sorted(  # noqa: E731
        int(t.text)
        for t in ET.fromstring(plots.confusion_matrices({"m": model_metrics(np.random.default_rng(1), k)})).iter(SVG + "text")
        if t.get("font-size") == "9"
    )
    matrix = np.asarray(model_metrics(np.random.default_rng(1), 12)["confusion_matrix"])
    assert counts(12) == sorted(matrix[matrix > 0].tolist())
    assert counts(13) == []


def test_each_accuracy_bar_is_as_tall_as_its_accuracy(metrics):
    root = ET.fromstring(plots.per_class_accuracy(metrics))
    bars = [r for r in root.iter(SVG + "rect") if r.find(SVG + "title") is not None]
    assert len(bars) == 6  # 3 of 4 classes have an accuracy, per model
    ax = plots.Axes((-0.5, 3.5), (0, 1.05))
    for bar in bars:
        accuracy = float(bar.find(SVG + "title").text.rsplit(": ", 1)[1])
        assert float(bar.get("height")) / ax.height == pytest.approx(accuracy / 1.05, abs=0.002)


def test_each_latency_box_spans_the_quartiles_with_its_median_marked(metrics):
    svg = plots.batch_latency(metrics)
    for name, m in metrics.items():
        p5, p25, p50, p75, p95 = np.percentile(m["latency"]["batches_ms"], [5, 25, 50, 75, 95])
        title = re.search(rf"<title>{re.escape(name.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;'))}: (.*?)</title>", svg)
        assert title.group(1) == f"p5 {p5:.2f}, median {p50:.2f}, p95 {p95:.2f} ms"
    root = ET.fromstring(svg)
    boxes = [r for r in root.iter(SVG + "rect") if r.get("fill-opacity")]
    frame = next(r for r in root.iter(SVG + "rect") if r.get("fill") == "none")
    left, width = float(frame.get("x")), float(frame.get("width"))
    all_ms = [np.percentile(m["latency"]["batches_ms"], [5, 95]) for m in metrics.values()]
    lo, hi = min(q[0] for q in all_ms), max(q[1] for q in all_ms)
    x0, x1 = max(0.0, lo - (hi - lo) * 0.08), hi + (hi - lo) * 0.08
    for box, m in zip(boxes, metrics.values()):
        p25, p75 = np.percentile(m["latency"]["batches_ms"], [25, 75])
        assert float(box.get("x")) == pytest.approx(left + (p25 - x0) / (x1 - x0) * width, abs=0.06)
        assert float(box.get("width")) == pytest.approx((p75 - p25) / (x1 - x0) * width, abs=0.11)


def test_each_timeline_segment_spans_its_phase():
    """prepare (started -> ready), wait at the barrier (ready -> loop), timed loop (loop -> finished), in seconds since the
    first start; without ready_at the preparation runs up to the loop and there is no wait."""
    windows = [
        {"model": "resnet", "shard": None, "started_at": 100.0, "ready_at": 104.0, "loop_started_at": 110.0, "finished_at": 150.0},
        {"model": "<vit>", "shard": "1/2", "started_at": 102.0, "ready_at": None, "loop_started_at": 110.5, "finished_at": 140.0},
    ]
    root = ET.fromstring(plots.timeline(windows))
    frame = next(r for r in root.iter(SVG + "rect") if r.get("fill") == "none")
    scale = float(frame.get("width")) / (50 * 1.02)  # px per second: the axis runs to 2% past the last end
    segments = {
        r.find(SVG + "title").text: float(r.get("width")) / scale for r in root.iter(SVG + "rect") if r.find(SVG + "title") is not None
    }
    assert segments == pytest.approx(
        {
            "resnet: prepare 0.00 s to 4.00 s": 4,
            "resnet: wait at the barrier 4.00 s to 10.00 s": 6,
            "resnet: timed loop 10.00 s to 50.00 s": 40,
            "<vit> 1/2: prepare 2.00 s to 10.50 s": 8.5,
            "<vit> 1/2: timed loop 10.50 s to 40.00 s": 29.5,
        },
        abs=0.01,
    )
