"""TLS on the whole path with real servers: client -mTLS-> root -mTLS-> leaves, configured
by file paths; clients without a valid certificate are refused at each hop. Metrics
endpoints bind 127.0.0.1 by default."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from harness.processes import free_port
from leaf.config import LeafConfig
from leaf.server import create_server as create_leaf_server
from transport.tls import TlsConfig
from root.client import AsyncRootClient, RootClient
from root.config import load_root_config
from tests.service.test_root_service import FAST, Cluster, LoopThread, build_cluster, close_cluster
from tests.tls_certs import CertFiles, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    loop = LoopThread()
    c = build_cluster(tmp_path_factory.mktemp("tls_cluster"), loop)
    try:
        yield c
    finally:
        close_cluster(c)
        loop.close()


def _server_tls(certs: CertFiles) -> TlsConfig:
    return TlsConfig(cert_file=str(certs.server_cert), key_file=str(certs.server_key), client_ca_file=str(certs.ca))


def _client_tls(certs: CertFiles, cert: Path | None, key: Path | None) -> TlsConfig:
    return TlsConfig(ca_file=str(certs.ca), cert_file=str(cert or ""), key_file=str(key or ""), server_name="localhost")


def _tls_root_config(cluster: Cluster, certs: CertFiles, leaf_ports: dict[str, int]) -> Path:
    """A root config file with [tls] and [leaf_tls] sections (relative certificate paths)."""
    base = cluster.base_config()
    lines = [f'catalog = "{base.catalog}"', "max_candidates = 300", "", "[bundles]", f'ads = "{cluster.bundle}"']
    for name, part in base.partitions.items():
        lines += ["", f"[partitions.{name}]", f'targets = ["localhost:{leaf_ports[name]}"]',
                  "models = [" + ", ".join(f'"{m}"' for m in part.models) + "]"]
    lines += ["", "[feature_store]", 'kind = "local"', f'path = "{cluster.store_dir}"',
              "", "[tls]", f'cert_file = "{certs.server_cert.name}"', f'key_file = "{certs.server_key.name}"',
              f'client_ca_file = "{certs.ca.name}"',
              "", "[leaf_tls]", f'ca_file = "{certs.ca.name}"', f'cert_file = "{certs.client_cert.name}"',
              f'key_file = "{certs.client_key.name}"', 'server_name = "localhost"']
    path = certs.ca.parent / "root.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mutual_tls_end_to_end_and_refusals(cluster: Cluster, certs: CertFiles) -> None:
    leaf_ports: dict[str, int] = {}
    for part in ("pa", "pb", "ps"):
        config_leaf = LeafConfig(repo=cluster.repos[part], torch_threads=1, grace_s=0.0, tls=_server_tls(certs))
        server, port = cluster.loop.run(start_leaf(config_leaf))
        cluster.leaves[f"tls-{part}"] = (server, port)
        leaf_ports[part] = port
    config = load_root_config(_tls_root_config(cluster, certs, leaf_ports))
    assert config.settings()["tls"] == "mutual" and config.settings()["leaf_tls"] == "mutual"
    assert config.tls.cert_file == str(certs.server_cert)  # relative paths resolve next to the config

    async def start() -> int:
        from root.server import create_server

        server, port = create_server(config)
        await server.start()
        cluster.roots.append(server)
        return port

    port = cluster.loop.run(start())
    target = f"localhost:{port}"
    cands = np.arange(20, dtype=np.uint64)
    good = _client_tls(certs, certs.client_cert, certs.client_key)
    seen = len(cluster.observed.requests)
    with RootClient(target, tls=good) as client:
        results = client.score(3, cands, FAST, timeout_s=20, wait_for_ready=True)
    assert all(r.ok for r in results.values()), results
    assert len(cluster.observed.requests) == seen  # served by the TLS leaves, not the plain ones
    np.testing.assert_allclose(results["m_a"].outputs["score"], cluster.expected_scores("m_a", 3, cands), rtol=1e-6, atol=1e-7)

    for bad in (_client_tls(certs, None, None), _client_tls(certs, certs.rogue_client_cert, certs.rogue_client_key)):
        with RootClient(target, tls=bad) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.score(3, cands, FAST, timeout_s=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with RootClient(f"127.0.0.1:{port}") as plain:
        with pytest.raises(grpc.RpcError) as info:
            plain.score(3, cands, FAST, timeout_s=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

    # A root whose leaf channels have no client certificate is refused by the leaves: its
    # models fail UNAVAILABLE, the root itself answers.
    no_cert = replace(config, tls=TlsConfig(), leaf_tls=TlsConfig(ca_file=str(certs.ca), server_name="localhost"))
    port2 = cluster.loop.run(start_plain(cluster, no_cert))

    async def call() -> dict[str, object]:
        async with AsyncRootClient(f"127.0.0.1:{port2}") as client:
            return await client.score(3, cands, ["m_a"], timeout_s=5)  # type: ignore[return-value]

    result = cluster.loop.run(call())["m_a"]
    assert getattr(result, "error_code") is grpc.StatusCode.UNAVAILABLE


async def start_leaf(config: LeafConfig) -> tuple[object, int]:
    server, port = create_leaf_server(config)
    await server.start()
    return server, port


async def start_plain(cluster: Cluster, config: object) -> int:
    from root.server import create_server

    server, port = create_server(config)  # type: ignore[arg-type]
    await server.start()
    cluster.roots.append(server)
    return port


def test_tls_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        LeafConfig(repo=tmp_path, tls=TlsConfig(client_ca_file="ca.pem"))
    with pytest.raises(ValueError, match="unknown keys"):
        TlsConfig.from_mapping({"cert": "x"}, "LeafConfig.tls")
    with pytest.raises(ValueError, match="cannot read"):
        TlsConfig(cert_file=str(tmp_path / "missing.pem"), key_file=str(tmp_path / "k")).server_credentials()


def test_metrics_endpoints_bind_loopback_by_default(cluster: Cluster) -> None:
    root_port, leaf_port = free_port(), free_port()
    config = cluster.base_config(metrics_port=root_port)
    assert config.metrics_host == "127.0.0.1"
    port = cluster.loop.run(start_plain(cluster, config))
    assert port
    assert LeafConfig(repo=cluster.repos["pa"]).metrics_host == "127.0.0.1"
    assert LeafConfig(repo=cluster.repos["pa"]).host == "127.0.0.1"
    leaf, _ = cluster.loop.run(start_leaf(LeafConfig(repo=cluster.repos["pa"], metrics_port=leaf_port, grace_s=0.0)))
    try:
        for p in (root_port, leaf_port):
            with socket.create_connection(("127.0.0.1", p), timeout=5):
                pass
            addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
            for address in addresses:  # not reachable on any other interface of this host
                with pytest.raises(OSError):
                    socket.create_connection((address, p), timeout=2).close()
    finally:
        cluster.loop.run(leaf.stop(0))  # type: ignore[attr-defined]
