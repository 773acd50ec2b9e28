"""Run by tests/cluster/test_oip_tritonclient.py in a process of its own (tritonclient and
rootleaf's generated modules both define the ``inference`` protobuf package): the protocol's
edges through ``tritonclient``, printed as one JSON document.

Usage: python tests/triton_checks.py ROOT_TARGET LEAF_TARGET MODEL VERSION
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def error_of(call: Callable[[], Any]) -> list[str]:
    """[status code name, message] of a call expected to fail; ["OK", ""] when it did not."""
    try:
        call()
    except InferenceServerException as exc:
        return [str(exc.status()).removeprefix("StatusCode."), exc.message() or ""]
    return ["OK", ""]


def ids_inputs(n: int, user: int) -> list[triton.InferInput]:
    ids = triton.InferInput("candidate_ids", [n], "INT64")
    ids.set_data_from_numpy(np.arange(1, n + 1, dtype=np.int64))
    user_id = triton.InferInput("user_id", [1], "INT64")
    user_id.set_data_from_numpy(np.array([user], dtype=np.int64))
    return [ids, user_id]


def main(root_target: str, leaf_target: str, model: str, version: str) -> dict[str, Any]:
    root = triton.InferenceServerClient(root_target)
    leaf = triton.InferenceServerClient(leaf_target)
    out: dict[str, Any] = {}
    for tier, client in (("root", root), ("leaf", leaf)):
        out[tier] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "version_ready": client.is_model_ready(model, version),
            "unknown_version_ready": client.is_model_ready(model, "999"),
            "unknown_model_ready": client.is_model_ready("no_such_model"),
            "metadata": client.get_model_metadata(model, as_json=True),
            "unknown_model_metadata": error_of(lambda c=client: c.get_model_metadata("no_such_model")),
            "unknown_version_metadata": error_of(lambda c=client: c.get_model_metadata(model, "999")),
        }
    # Root: scores for users 3 and 9, raw binary tensors; then the edges.
    scores = {}
    for user in (3, 9):
        result = root.infer(model, ids_inputs(8, user), model_version=version)
        outputs = [o["name"] for o in out["root"]["metadata"]["outputs"]]
        scores[str(user)] = {name: result.as_numpy(name).tolist() for name in outputs}
        out["root"]["served_version"] = result.get_response().model_version
    out["root"]["scores"] = scores
    latest = root.infer(model, ids_inputs(8, 3), model_version="999")
    out["root"]["unknown_version_infer"] = latest.get_response().model_version
    out["root"]["unknown_model_infer"] = error_of(lambda: root.infer("no_such_model", ids_inputs(2, 1)))
    bad = ids_inputs(2, 1)
    bad[1] = triton.InferInput("user_id", [1], "FP32")
    bad[1].set_data_from_numpy(np.array([1.0], dtype=np.float32))
    out["root"]["bad_input"] = error_of(lambda: root.infer(model, bad))
    out["root"]["missing_input"] = error_of(lambda: root.infer(model, ids_inputs(2, 1)[:1]))
    # Leaf: the model's own inputs from its metadata, raw binary tensors.
    inputs = []
    for spec in out["leaf"]["metadata"]["inputs"]:
        shape = [5 if int(d) == -1 else int(d) for d in spec["shape"]]
        tensor = triton.InferInput(spec["name"], shape, spec["datatype"])
        tensor.set_data_from_numpy(np.ones(shape, dtype=triton_to_np_dtype(spec["datatype"])))
        inputs.append(tensor)
    answer = leaf.infer(model, inputs, model_version=version)
    out["leaf"]["served_version"] = answer.get_response().model_version
    out["leaf"]["shapes"] = {o.name: list(o.shape) for o in answer.get_response().outputs}
    out["leaf"]["unknown_version_infer"] = error_of(lambda: leaf.infer(model, inputs, model_version="999"))
    out["leaf"]["unknown_model_infer"] = error_of(lambda: leaf.infer("no_such_model", inputs))
    wrong = list(inputs)
    first = out["leaf"]["metadata"]["inputs"][0]
    wrong[0] = triton.InferInput(first["name"], [5, 1, 2], "FP64")
    wrong[0].set_data_from_numpy(np.ones((5, 1, 2), dtype=np.float64))
    out["leaf"]["bad_input"] = error_of(lambda: leaf.infer(model, wrong))
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
