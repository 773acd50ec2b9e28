"""The Kubernetes delivery's commands on their own: a ConfigMap applied through the kubelet
stand-in (a real subprocess) lands in its mounted directory and its revert brings the
previous content back through the same swap; a ConfigMap that did not exist is deleted on
revert; a failing apply command fails the delivery with its own words."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from deploy.delivery import DeliveryError
from deploy.fleet_config import DeliveryConfig
from deploy.k8s_delivery import CONFIGMAP, bundle_configmap_of, deliver_configmap, revert_change
from deploy.k8s_render import bundle_configmap

pytestmark = pytest.mark.cluster


def _config(tmp: Path, mounts: dict[str, list[str]]) -> DeliveryConfig:
    map_file = tmp / "map.json"
    map_file.write_text(json.dumps({"configmaps": mounts, "claims": {}, "store": str(tmp / "api")}))
    sim = [sys.executable, "-m", "harness.kubelet_sim", "--map", str(map_file)]
    return DeliveryConfig(kind="kubernetes", apply_command=(*sim, "apply"), get_command=(*sim, "get"),
                          delete_command=(*sim, "delete"), command_timeout_s=60)


def test_apply_then_revert_restores_the_mounted_content(tmp_path: Path) -> None:
    mounted = tmp_path / "pod" / "bundles" / "ads"
    mounted.mkdir(parents=True)
    (mounted / "module_info.json").write_text('{"old": []}\n')
    cfg = _config(tmp_path, {"rl/bundle-ads": [str(mounted)]})
    obj = bundle_configmap("rl", "ads", b'{"new": []}\n', track="production", rollout_id="r1", build_id="b1")
    change = deliver_configmap(cfg, obj, tmp_path / "backups", "production namespace rl")
    assert change is not None and change.kind == CONFIGMAP and bundle_configmap_of(change, "ads") == "rl"
    assert os.readlink(mounted / "module_info.json") == "..data/module_info.json"
    assert (mounted / "module_info.json").read_text() == '{"new": []}\n'
    assert deliver_configmap(cfg, obj, tmp_path / "backups", "again") is None  # the cluster holds exactly it
    revert_change(cfg, change)
    assert (mounted / "module_info.json").read_text() == '{"old": []}\n'


def test_a_configmap_that_did_not_exist_is_deleted_on_revert(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    obj = bundle_configmap("rl", "ads", b"{}\n", track="canary", rollout_id="r1", build_id="b1")
    change = deliver_configmap(cfg, obj, tmp_path / "backups", "canary namespace rl")
    assert change is not None and change.backup is None and (tmp_path / "api" / "rl" / "ConfigMap" / "bundle-ads.json").exists()
    revert_change(cfg, change)
    assert not (tmp_path / "api" / "rl" / "ConfigMap" / "bundle-ads.json").exists()


def test_a_failing_apply_command_fails_the_delivery(tmp_path: Path) -> None:
    failing = (sys.executable, "-c", "import sys; sys.stderr.write('forbidden: no RBAC'); sys.exit(1)")
    cfg = DeliveryConfig(kind="kubernetes", apply_command=failing, get_command=(sys.executable, "-c", "pass"))
    obj = bundle_configmap("rl", "ads", b"{}\n", track="canary", rollout_id="r1", build_id="b1")
    with pytest.raises(DeliveryError, match="exited 1: forbidden: no RBAC"):
        deliver_configmap(cfg, obj, tmp_path / "backups", "canary namespace rl")
