"""The shadow mirror's pure parts: its config, and the comparison of a mirrored answer with
the production answer to the same request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protos.rootleaf.v1 import root_pb2
from root.config import ShadowConfig, root_config_from_dict
from root.shadow import compare
from wire.codec import encode


def _response(**scores: list[float] | None) -> root_pb2.ScoreResponse:
    out = root_pb2.ScoreResponse(request_id="r")
    for model, values in scores.items():
        result = out.results.add(model=model, version="1")
        if values is None:
            result.error_code = 14
        else:
            result.outputs.append(encode("score", np.asarray(values, dtype=np.float32)))
    return out


def test_compare_classifies_each_model() -> None:
    production = _response(a=[0.1, 0.2], b=[0.5, 0.5], c=[0.3], d=None, e=[0.4])
    canary = _response(a=[0.1, 0.2], b=[0.5, 0.6], c=None, d=[0.1], e=[0.4, 0.4])
    assert compare(production, canary, 0.05) == {
        "a": "match", "b": "differ", "c": "canary_error", "d": "production_error", "e": "differ"}
    assert compare(production, canary, 0.2)["b"] == "match"
    assert compare(production, None, 0.05) == {
        "a": "canary_error", "b": "canary_error", "c": "canary_error", "d": "production_error", "e": "canary_error"}


@pytest.mark.parametrize(("field", "value"), [
    ("target", "nohost"), ("sample", 1.5), ("sample", -0.1), ("max_per_s", 0), ("max_in_flight", 0),
    ("max_in_flight", True), ("timeout_s", 0), ("max_score_diff", float("nan")),
])
def test_shadow_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"shadow.{field}"):
        ShadowConfig(**{"target": "127.0.0.1:1", field: value})  # type: ignore[arg-type]


def test_root_config_reads_the_shadow_section(tmp_path: Path) -> None:
    doc = {"catalog": "c.json", "feature_store": {"kind": "local", "path": "store"},
           "partitions": {"p": {"targets": ["127.0.0.1:1"], "models": ["m"]}}}
    assert not root_config_from_dict(doc, tmp_path).shadow.enabled
    config = root_config_from_dict({**doc, "shadow": {"target": "127.0.0.1:2", "sample": 0.25}}, tmp_path)
    assert config.shadow == ShadowConfig(target="127.0.0.1:2", sample=0.25)
    assert config.settings()["shadow"] == "127.0.0.1:2 sample 0.25"
    with pytest.raises(ValueError, match="unknown key 'rate'"):
        root_config_from_dict({**doc, "shadow": {"target": "127.0.0.1:2", "rate": 1}}, tmp_path)
