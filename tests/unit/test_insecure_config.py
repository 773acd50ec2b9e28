"""Configurations that look secure and are not are refused when they are loaded, naming the
field: a server given the client's ``ca_file`` (it would verify no client), a channel given
the server's ``client_ca_file``, a ``rediss://`` URL that turns certificate checks off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from leaf.config import LeafConfig
from root.config import FeatureStoreConfig, load_root_config
from transport.builder import build_server
from transport.tls import TlsConfig

SERVER_WITH_CA_FILE = TlsConfig(cert_file="server.pem", key_file="server.key", ca_file="ca.pem")

ROOT = """
listen = "127.0.0.1:0"
catalog = "catalog.json"

[partitions.p]
targets = ["127.0.0.1:5001"]
models = ["m"]

[feature_store]
kind = "local"
path = "store"

{section}
"""


def test_a_leaf_given_ca_file_instead_of_client_ca_file_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LeafConfig\.tls\.ca_file is a client setting.*client_ca_file"):
        LeafConfig(Path("repo"), tls=SERVER_WITH_CA_FILE)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('[tls]\ncert_file = "s.pem"\nkey_file = "s.key"\nca_file = "ca.pem"', "tls.ca_file"),
        ('[tls]\ncert_file = "s.pem"\nkey_file = "s.key"\nserver_name = "x"', "tls.server_name"),
        ('[leaf_tls]\nclient_ca_file = "ca.pem"', "leaf_tls.client_ca_file"),
    ],
)
def test_a_root_config_with_a_setting_its_side_ignores_is_refused(tmp_path: Path, section: str, field: str) -> None:
    path = tmp_path / "root.toml"
    path.write_text(ROOT.format(section=section))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_root_config(path)


def test_a_server_built_from_a_tls_config_with_ca_file_refuses_to_bind() -> None:
    """Whatever built the ``TlsConfig``: the server side checks it before reading any file."""
    async def build() -> None:
        build_server(listen="127.0.0.1:0", tls=SERVER_WITH_CA_FILE, services=())

    with pytest.raises(ValueError, match=r"tls\.ca_file is a client setting"):
        asyncio.run(build())


def test_a_channel_given_client_ca_file_is_refused() -> None:
    with pytest.raises(ValueError, match=r"tls\.client_ca_file is a server setting"):
        TlsConfig(client_ca_file="ca.pem").channel_credentials()


@pytest.mark.parametrize(
    "query", ["ssl_cert_reqs=none", "ssl_cert_reqs=optional", "ssl_check_hostname=false", "db=0&ssl_cert_reqs=NONE"]
)
def test_a_rediss_url_that_skips_verification_is_refused(query: str) -> None:
    with pytest.raises(ValueError, match=r"feature_store\.url: ssl_.*turns off verification"):
        FeatureStoreConfig(kind="redis", url=f"rediss://redis.internal:6380/?{query}")


def test_verified_settings_still_load() -> None:
    assert FeatureStoreConfig(kind="redis", url="rediss://redis.internal:6380/0?ssl_ca_certs=/ca.pem").url
    LeafConfig(Path("repo"), tls=TlsConfig(cert_file="s.pem", key_file="s.key", client_ca_file="ca.pem"))
