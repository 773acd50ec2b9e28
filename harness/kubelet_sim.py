"""A stand-in for ``kubectl`` + API server + kubelet on one machine, for the Kubernetes
delivery kind against local roots and leaves (tests, worked examples).

``python -m harness.kubelet_sim --map MAP apply|get|delete`` reads a manifest on stdin (what
``deploy.k8s_delivery`` pipes to ``kubectl``). MAP (JSON) says where objects land:

- ``configmaps``: ``"<namespace>/<name>"`` -> directories where pods mount it. An applied
  ConfigMap is written into each the way the kubelet's atomic writer does: the files go into
  a fresh ``..<timestamp>`` directory, the ``..data`` symlink is swapped to it by rename, and
  each key is a symlink ``<key> -> ..data/<key>``; the old directory is then removed.
- ``claims``: ``"<namespace>/<claim>"`` -> the directory a PersistentVolumeClaim holds. An
  applied Job runs its container's command at once (``rootleaf`` args, each volume mount path
  replaced by its claim directory plus subPath); as with a real Job, its failure does not
  fail the apply (the rollout's verification sees it).
- ``store``: a directory recording applied objects (the API server); ``get`` of a ConfigMap
  never applied reads what its first mount directory holds.

Single-threaded command-line tool.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.k8s_render import from_manifest

DATA = "..data"


def atomic_write_configmap(directory: Path, files: dict[str, bytes]) -> None:
    """The kubelet's atomic writer: new timestamped dir, ``..data`` swapped by rename, keys as
    symlinks through ``..data``, stale keys and the old dir removed."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    for name, content in files.items():
        (fresh / name).write_bytes(content)
        os.chmod(fresh / name, 0o644)
    os.chmod(fresh, 0o755)
    data = directory / DATA
    old = os.readlink(data) if data.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    os.symlink(fresh.name, tmp_link)
    os.replace(tmp_link, data)
    for name in files:
        link = directory / name
        if link.is_symlink() and os.readlink(link) == f"{DATA}/{name}":
            continue
        tmp = directory / f".{name}.link-tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"{DATA}/{name}", tmp)
        os.replace(tmp, link)  # a plain file from before the first apply is replaced atomically
    for entry in directory.iterdir():
        if entry.is_symlink() and os.readlink(entry).startswith(f"{DATA}/") and entry.name not in files:
            entry.unlink()
    if old is not None and old != fresh.name:
        _rmtree(directory / old)


def _rmtree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
    path.rmdir()


def configmap_files(obj: dict[str, Any]) -> dict[str, bytes]:
    files = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return files


class Cluster:
    """The map file's view: where ConfigMaps are mounted, what claims hold, what was applied."""

    def __init__(self, map_file: Path) -> None:
        doc = json.loads(map_file.read_text())
        self.configmaps: dict[str, list[str]] = doc.get("configmaps", {})
        self.claims: dict[str, str] = doc.get("claims", {})
        self.store = Path(doc["store"])

    def _path(self, obj: dict[str, Any]) -> Path:
        meta = obj["metadata"]
        return self.store / meta.get("namespace", "default") / obj["kind"] / f"{meta['name']}.json"

    def apply(self, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        key = f"{meta.get('namespace', 'default')}/{meta['name']}"
        path = self._path(obj)
        if obj["kind"] == "Job" and path.exists():
            if json.loads(path.read_text()).get("spec") != obj.get("spec"):
                raise SystemExit(f'The Job "{meta["name"]}" is invalid: spec.template: field is immutable')
            return f"job.batch/{meta['name']} unchanged"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, sort_keys=True))
        if obj["kind"] == "ConfigMap":
            for directory in self.configmaps.get(key, []):
                atomic_write_configmap(Path(directory), configmap_files(obj))
            return f"configmap/{meta['name']} configured"
        if obj["kind"] == "Job":
            code = self.run_job(obj)
            return f"job.batch/{meta['name']} created (ran: exit {code})"
        return f"{obj['kind'].lower()}/{meta['name']} stored"

    def run_job(self, obj: dict[str, Any]) -> int:
        namespace = obj["metadata"].get("namespace", "default")
        pod = obj["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        container = pod["containers"][0]
        mounts = []
        for m in container.get("volumeMounts", []):
            base = self.claims.get(f"{namespace}/{claims.get(m['name'], '')}")
            if base is None:
                print(f"job {obj['metadata']['name']}: volume {m['name']} has no claim in the map", file=sys.stderr)
                return 1
            mounts.append((m["mountPath"], str(Path(base) / m.get("subPath", ""))))
        args = []
        for arg in container.get("args", []):
            for mount_path, local in sorted(mounts, key=lambda x: -len(x[0])):
                if arg == mount_path or arg.startswith(mount_path + "/"):
                    arg = local + arg[len(mount_path):]
                    break
            args.append(arg)
        log = self._path(obj).with_suffix(".log")
        with log.open("wb") as out:
            done = subprocess.run([sys.executable, "-m", "rootleaf.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                  timeout=600, check=False)
        return done.returncode

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        path = self._path(obj)
        if path.exists():
            stored: dict[str, Any] = json.loads(path.read_text())
            return stored
        meta = obj["metadata"]
        mounted = self.configmaps.get(f"{meta.get('namespace', 'default')}/{meta['name']}", [])
        if obj["kind"] != "ConfigMap" or not mounted or not Path(mounted[0]).is_dir():
            return None
        data: dict[str, str] = {}
        binary: dict[str, str] = {}
        for p in sorted(Path(mounted[0]).iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            content = p.read_bytes()
            try:
                data[p.name] = content.decode("utf-8")
            except UnicodeDecodeError:
                binary[p.name] = base64.b64encode(content).decode()
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": meta["name"],
               "namespace": meta.get("namespace", "default")}, "data": data}
        return {**doc, "binaryData": binary} if binary else doc

    def delete(self, obj: dict[str, Any]) -> str:
        # The kubelet keeps a deleted ConfigMap's last content in running pods' volumes.
        self._path(obj).unlink(missing_ok=True)
        return f"{obj['kind'].lower()}/{obj['metadata']['name']} deleted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubelet_sim", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--map", required=True, type=Path)
    parser.add_argument("verb", choices=("apply", "get", "delete"))
    parser.add_argument("rest", nargs="*", help="kubectl's own flags (-f -, -o json, ...): accepted, ignored")
    args, _ = parser.parse_known_args(argv)
    cluster = Cluster(args.map)
    objects = from_manifest(sys.stdin.read())
    if args.verb == "get":
        found = [o for o in (cluster.get(obj) for obj in objects) if o is not None]
        if found:
            print(json.dumps(found[0] if len(found) == 1 else {"apiVersion": "v1", "kind": "List", "items": found}))
        return 0
    for obj in objects:
        print(cluster.apply(obj) if args.verb == "apply" else cluster.delete(obj))
    return 0


if __name__ == "__main__":
    sys.exit(main())
