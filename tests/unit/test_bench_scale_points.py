"""The scale benchmark's generated workloads: each point's workload parses, has the sizes the
point names, and the base point is run once however many axes share it."""

from __future__ import annotations

import tomllib

from benchmarks.scale import PRESETS, Point, sweep, to_toml, workload_doc
from harness.workload import builtin_workload, load_workload, parse_workload


def test_each_point_is_a_workload_of_its_sizes() -> None:
    base = load_workload(builtin_workload("w2"))
    candidate_features = sum(g.count for g in base.features if g.entity == "candidate")
    for point in (Point(2048, 16, 1, 1.0), Point(16, 1, 8, 0.25), Point(160, 2, 2, 2.0)):
        workload = parse_workload(tomllib.loads(to_toml(workload_doc(base, point))))
        assert workload.info.candidates_per_request == point.candidates
        assert workload.info.items >= point.candidates
        partitions = workload.partitions()
        assert len(partitions) == point.partitions
        assert all(len(models) == point.models for models in partitions.values())
        scaled = sum(g.count for g in workload.features if g.entity == "candidate")
        assert abs(scaled - candidate_features * point.features) <= len(base.features)


def test_the_base_point_runs_once() -> None:
    preset = PRESETS["full"]
    points = sweep(preset, ("candidates", "models", "partitions", "features"))
    assert points[0] == preset.base and len(points) == len(set(points))
    assert len(points) == 1 + sum(len(values) - 1 for values in preset.axes.values())
