"""``rootleaf score --target HOST:PORT --model m [--version v] --user U --candidates 1,2,3``."""

from __future__ import annotations

import argparse
import sys

import grpc
import numpy as np

from transport.tls import TlsConfig
from root.client import ModelScores, RootClient


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf score", description="Score candidates through a root.")
    p.add_argument("--target", required=True, help="root address HOST:PORT")
    p.add_argument("--model", action="append", required=True, help="model name (repeat for several)")
    p.add_argument("--version", action="append", default=None,
                   help="version for the --model at the same position (default: latest)")
    p.add_argument("--user", type=int, required=True, help="user id")
    p.add_argument("--candidates", required=True, help="comma-separated candidate ids")
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--tls-ca", default="", help="PEM CA bundle that verifies the root (turns TLS on)")
    p.add_argument("--tls-cert", default="", help="PEM client certificate for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", default="", help="name to verify in the root's certificate")
    return p


def format_table(candidates: np.ndarray, results: dict[str, ModelScores]) -> str:
    """One row per candidate, one column per (model, output); errors listed below."""
    columns: list[tuple[str, np.ndarray]] = []
    errors = []
    for name, res in results.items():
        if not res.ok:
            errors.append(f"{name}: {res.error_code.name} {res.error_message}")
            continue
        for out, values in res.outputs.items():
            columns.append((f"{name}@{res.version}:{out}", values.reshape(len(candidates), -1)[:, 0]))
    headers = ["candidate", *(h for h, _ in columns)]
    widths = [max(len(h), 12) for h in headers]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    for i, cand in enumerate(candidates.tolist()):
        cells = [str(cand), *(f"{float(v[i]):.6f}" for _, v in columns)]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    lines += [f"error  {e}" for e in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        candidates = np.array([int(c) for c in args.candidates.split(",") if c.strip()], dtype=np.uint64)
    except ValueError:
        print(f"rootleaf score: --candidates must be comma-separated integers, got {args.candidates!r}", file=sys.stderr)
        return 2
    versions = args.version or []
    if len(versions) > len(args.model):
        print("rootleaf score: more --version than --model", file=sys.stderr)
        return 2
    models = [(m, versions[i] if i < len(versions) else None) for i, m in enumerate(args.model)]
    try:
        tls = TlsConfig(cert_file=args.tls_cert, key_file=args.tls_key, ca_file=args.tls_ca,
                        server_name=args.tls_server_name)
        client = RootClient(args.target, tls=tls)
    except ValueError as exc:
        print(f"rootleaf score: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            results = client.score(args.user, candidates, models, timeout_s=args.timeout_s)
        except grpc.RpcError as exc:
            print(f"rootleaf score: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(format_table(candidates, results))
    return 0 if all(r.ok for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
