"""``rootleaf bench scale``: how root and leaf cost grow with the work, one axis at a time.

From a base point (candidates per request C, models per partition M, partitions P and a
catalog scale F applied to every candidate feature group of the base workload), each axis
is swept with the others held at the base: C (16 -> 2048), M (1 -> 16), P (1 -> 8), F.
Every point is a generated workload (the base workload's feature groups, its first model's
``uses``, hidden sizes and outputs for every model, partitions ``p0..``, models ``p0_m0..``;
models on one partition read the same features, as the workload generator chooses them per
partition) run by the cluster benchmark (``benchmarks.cluster.run_cluster_bench``) in two
modes, interleaved: untrimmed (lz4+dedup+part) and trimmed (trim+lz4+dedup+part). The base
point runs once and is shared by the axes. Per point and mode: root CPU per request and per
(candidate x model), leaf CPU per request, wire bytes per request against the partition
floor, max throughput (closed loop) and p99 in the open loop at ``rate_fraction`` of the
untrimmed mode's max. Output: a table, a JSON document and one PNG per axis.

Targets: the trimmed mode's bytes within 1.05x of the partition floor at every point; its
root CPU per (candidate x model) non-increasing along the candidates and models axes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.cluster import BenchOptions, FULL, Mode, run_cluster_bench
from harness.workload import Workload, builtin_workload, load_workload

log = logging.getLogger("rootleaf.bench.scale")

UNTRIMMED = Mode(False, True, True, True)
MODES = (UNTRIMMED, FULL)
AXES = ("candidates", "models", "partitions", "features")
BYTES_TARGET = 1.05
# A CPU figure counts as increasing only when it rises by more than this share (noise).
CPU_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class Point:
    """One workload size."""

    candidates: int
    models: int
    """Models per partition."""
    partitions: int
    features: float
    """Scale of every candidate feature group's count."""

    def value(self, axis: str) -> float:
        return float(getattr(self, axis))

    @property
    def name(self) -> str:
        scale = f"{self.features:g}".replace(".", "_")
        return f"scale_c{self.candidates}_m{self.models}_p{self.partitions}_f{scale}"


@dataclass(frozen=True, slots=True)
class Preset:
    """A base workload, a base point, the values of each axis and the phase sizes."""

    workload: str
    base: Point
    axes: Mapping[str, tuple[float, ...]]
    options: BenchOptions


PRESETS: dict[str, Preset] = {
    "full": Preset(
        "w2", Point(160, 2, 2, 1.0),
        {"candidates": (16, 64, 160, 512, 2048), "models": (1, 2, 4, 8, 16), "partitions": (1, 2, 4, 8),
         "features": (0.25, 0.5, 1.0, 2.0)},
        BenchOptions(concurrency=8, closed_s=4.0, closed_max_requests=1000, open_s=5.0, open_min_requests=40,
                     idle_s=1.0, pool_size=16, probe_requests=2, rounds=1, timeout_s=30.0),
    ),
    # A few seconds a point: the CI smoke test (bytes are deterministic; timings are not).
    # Requests of 256+ candidates: below that the ci workload's per-feature headers alone
    # exceed 5% of its few KB of payload (see docs/performance.md).
    "quick": Preset(
        "ci", Point(256, 1, 1, 1.0),
        {"candidates": (256, 1024), "models": (1, 2), "partitions": (1, 2), "features": (1.0, 2.0)},
        BenchOptions(concurrency=2, closed_s=0.5, closed_max_requests=40, open_s=0.5, open_min_requests=10,
                     idle_s=0.2, pool_size=4, probe_requests=1, rounds=1, timeout_s=30.0, progress=False),
    ),
}


def workload_doc(base: Workload, point: Point) -> dict[str, Any]:
    """The generated workload of ``point`` (a document ``parse_workload`` accepts)."""
    template = base.models[0]
    features = []
    for group in base.features:
        entry: dict[str, Any] = {
            "prefix": group.prefix, "entity": group.entity, "count": group.count, "dtype": group.dtype,
            "shape": list(group.shape), "kind": group.kind, "zero_fraction": group.zero_fraction,
            "default": group.default,
        }
        if group.entity == "candidate":
            entry["count"] = max(1, round(group.count * point.features))
        features.append(entry)
    models = [
        {"name": f"p{p}_m{m}", "partition": f"p{p}", "versions": ["1"], "uses": dict(template.uses),
         "hidden": list(template.hidden), "outputs": list(template.outputs)}
        for p in range(point.partitions) for m in range(point.models)
    ]
    info = base.info
    return {
        "workload": {"name": point.name, "seed": info.seed, "candidates_per_request": point.candidates,
                     "users": info.users, "items": max(info.items, 2 * point.candidates)},
        "features": features,
        "models": models,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """A workload document as TOML (the subset workload files use)."""
    lines = ["[workload]", *(f"{k} = {_toml_value(v)}" for k, v in doc["workload"].items())]
    for table in ("features", "models"):
        for entry in doc[table]:
            lines += ["", f"[[{table}]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def sweep(preset: Preset, axes: Sequence[str]) -> list[Point]:
    """The points to run, base first, each once."""
    points = [preset.base]
    for axis in axes:
        for value in preset.axes[axis]:
            point = replace(preset.base, **{axis: type(getattr(preset.base, axis))(value)})
            if point not in points:
                points.append(point)
    return points


FIGURES = (
    "root_cpu_ms_per_request", "root_cpu_us_per_candidate_model", "leaf_cpu_ms_per_request",
    "wire_bytes_per_request", "partition_floor_bytes_per_request", "wire_over_partition_floor",
    "max_rps", "offered_rps", "p99_ms", "errors", "error_samples", "scores_match_baseline",
)


def run_point(preset: Preset, point: Point, directory: Path) -> dict[str, Any]:
    """The cluster benchmark on ``point``'s workload; each mode's figures."""
    base = load_workload(builtin_workload(preset.workload))
    path = directory / "workloads" / f"{point.name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(workload_doc(base, point)), encoding="utf-8")
    doc = run_cluster_bench(path, directory / point.name, list(MODES), preset.options)
    modes = {m["label"]: {k: m[k] for k in FIGURES} | {"spread": m.get("spread", {})} for m in doc["modes"]}
    return {"point": asdict(point), "untrimmed": modes[UNTRIMMED.label], "trimmed": modes[FULL.label]}


def evaluate(preset: Preset, results: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[dict[str, Any]]:
    """The targets over the points run."""
    worst = max(r["trimmed"]["wire_over_partition_floor"] for r in results)
    targets: list[dict[str, Any]] = [{
        "name": f"trimmed bytes <= {BYTES_TARGET}x partition floor at every point",
        "value": worst, "met": worst <= BYTES_TARGET,
    }]
    for axis in ("candidates", "models"):
        if axis not in axes:
            continue
        curve = [r["trimmed"]["root_cpu_us_per_candidate_model"] for r in along(preset, results, axis)]
        rises = [b / a - 1 for a, b in zip(curve, curve[1:]) if a > 0]
        targets.append({
            "name": f"trimmed root CPU per (candidate x model) non-increasing along {axis}",
            "value": curve, "met": all(r <= CPU_TOLERANCE for r in rises),
        })
    return targets


def along(preset: Preset, results: Sequence[Mapping[str, Any]], axis: str) -> list[Mapping[str, Any]]:
    """The points of ``axis`` (the others at the base), in axis order."""
    others = [a for a in AXES if a != axis]
    base = asdict(preset.base)
    chosen = [r for r in results if all(r["point"][a] == base[a] for a in others)
              and r["point"][axis] in preset.axes[axis]]
    return sorted(chosen, key=lambda r: r["point"][axis])


def print_table(doc: Mapping[str, Any], out: Any = sys.stdout) -> None:
    header = (f"{'axis':<11}{'value':>7} {'mode':<10}{'root ms':>9}{'us/(c*m)':>10}{'+-':>6}{'leaf ms':>9}{'KB/req':>10}"
              f"{'/pfloor':>8}{'max rps':>9}{'rate':>7}{'p99 ms':>9}{'err':>5}")
    print(header, file=out)
    print("-" * len(header), file=out)
    # +-: spread (max - min) of us/(c*m) over the interleaved rounds (nan with one round)
    for axis in doc["axes"]:
        for r in doc["by_axis"][axis]:
            for mode in ("untrimmed", "trimmed"):
                m = r[mode]
                print(f"{axis:<11}{r['point'][axis]:>7g} {mode:<10}{m['root_cpu_ms_per_request']:>9.2f}"
                      f"{m['root_cpu_us_per_candidate_model']:>10.2f}"
                      f"{m['spread'].get('root_cpu_us_per_candidate_model', math.nan):>6.2f}{m['leaf_cpu_ms_per_request']:>9.2f}"
                      f"{m['wire_bytes_per_request'] / 1e3:>10.1f}{m['wire_over_partition_floor']:>8.3f}"
                      f"{m['max_rps']:>9.1f}{m['offered_rps']:>7.1f}{m['p99_ms']:>9.1f}{m['errors']:>5}", file=out)
    for t in doc["targets"]:
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else ", ".join(f"{v:.2f}" for v in value)
        print(f"target: {t['name']}: {shown} -> {'met' if t['met'] else 'NOT met'}", file=out)


PLOTTED = (
    ("root_cpu_us_per_candidate_model", "root CPU us / (candidate x model)"),
    ("leaf_cpu_ms_per_request", "leaf CPU ms / request"),
    ("wire_over_partition_floor", "wire bytes / partition floor"),
    ("max_rps", "max req/s (closed loop)"),
    ("p99_ms", "p99 ms (open loop)"),
    ("root_cpu_ms_per_request", "root CPU ms / request"),
)


def write_plots(doc: Mapping[str, Any], directory: Path) -> list[Path]:
    """One PNG per axis: each figure against the axis, trimmed and untrimmed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis in doc["axes"]:
        points = doc["by_axis"][axis]
        xs = [r["point"][axis] for r in points]
        fig, panels = plt.subplots(2, 3, figsize=(13, 7))
        for (key, title), ax in zip(PLOTTED, panels.flat):
            for mode, style in (("untrimmed", "o--"), ("trimmed", "s-")):
                ax.plot(xs, [r[mode][key] for r in points], style, label=mode)
            ax.set_xscale("log", base=2)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(axis)
            ax.grid(True, alpha=0.3)
        panels.flat[0].legend()
        fig.suptitle(f"rootleaf bench scale: {axis} (others at the base point)")
        fig.tight_layout()
        path = directory / f"scale_{axis}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def run_scale(preset: Preset, directory: Path, axes: Sequence[str]) -> dict[str, Any]:
    results = []
    for point in sweep(preset, axes):
        log.info("scale point %s", point.name)
        results.append(run_point(preset, point, directory))
    return {
        "base_workload": preset.workload,
        "rounds": preset.options.rounds,
        "base": asdict(preset.base),
        "axes": list(axes),
        "modes": {"untrimmed": UNTRIMMED.label, "trimmed": FULL.label},
        "points": results,
        "by_axis": {axis: along(preset, results, axis) for axis in axes},
        "targets": evaluate(preset, results, axes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rootleaf bench scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--axes", default=",".join(AXES), help=f"comma-separated, of {', '.join(AXES)}")
    p.add_argument("--dir", type=Path, default=Path(".rootleaf/bench-scale"), help="work directory")
    p.add_argument("--out", type=Path, default=Path("scale-out"), help="where scale.json and the PNGs go")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per point (default: the preset's)")
    args = p.parse_args(argv)
    axes = args.axes.split(",")
    if any(a not in AXES for a in axes):
        p.error(f"--axes: each of {', '.join(AXES)}, got {args.axes!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preset = PRESETS[args.preset]
    if args.rounds is not None:
        if args.rounds < 1:
            p.error(f"--rounds must be >= 1, got {args.rounds}")
        preset = replace(preset, options=replace(preset.options, rounds=args.rounds))
    doc = run_scale(preset, args.dir, axes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    print_table(doc)
    for path in write_plots(doc, args.out):
        print(f"plot: {path}")
    print(f"results: {args.out / 'scale.json'}")
    ok = all(r[m]["errors"] == 0 and r[m]["scores_match_baseline"] for r in doc["points"] for m in ("untrimmed", "trimmed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
