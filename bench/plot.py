"""Latency distributions side by side: one ECDF panel per measured phase, taskenv against raw.

An ECDF shows the whole distribution, tail included, without choosing bins; drawn on the Agg
canvas directly, with no pyplot state and no display needed.
"""

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from taskenv.bench.results import Results
from taskenv.bench.stats import Sample, flatten, percentile

Series = tuple[str, list[Sample]]


def _ecdf(axes: Axes, label: str, samples: list[Sample]) -> None:
    latencies = sorted(s.latency * 1000 for s in samples if s.error is None)
    if not latencies:
        return
    fractions = [(i + 1) / len(latencies) for i in range(len(latencies))]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    axes.step(latencies, fractions, where="post", label=f"{label} (p50 {p50:.1f}, p99 {p99:.1f} ms)")


def panels(results: Results) -> list[tuple[str, list[Series]]]:
    """The phases that have successful samples, each with its sides."""
    found = [
        ("exec", [("taskenv", flatten(results.exec_taskenv)), ("raw docker", flatten(results.exec_raw))]),
        (
            "provision",
            [("taskenv", flatten(results.provision_taskenv)), ("raw docker", flatten(results.provision_raw))],
        ),
        ("hold", [("taskenv", results.hold)]),
    ]
    return [
        (title, series) for title, series in found if any(s.error is None for _, ss in series for s in ss)
    ]


def plot(results: Results, path: Path) -> bool:
    """Write the figure; False (and no file) when nothing succeeded to draw."""
    shown = panels(results)
    if not shown:
        return False
    figure = Figure(figsize=(6 * len(shown), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (title, series) in zip(figure.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
        for label, samples in series:
            _ecdf(axes, label, samples)
        axes.set_title(f"{title} latency")
        axes.set_xlabel("ms (log scale)")
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_ylabel("fraction of requests answered within")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)
    return True
