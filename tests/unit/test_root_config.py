"""Root config: TOML loading, path resolution, validation naming the bad field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from root.config import load_root_config

GOOD = """
listen = "127.0.0.1:0"
catalog = "catalog.json"
trim = false
compression = "none"
dedup_request_features = false
default_deadline_ms = 250
max_candidates = 1000

[bundles]
ads = "bundles/ads/module_info.json"

[partitions.ads]
targets = ["127.0.0.1:5001", "127.0.0.1:5002"]
models = ["m1", "m2"]

[partitions.eng]
targets = ["dns:///leaf-eng:5000"]
models = ["m3"]

[feature_store]
kind = "local"
path = "store"

[cache]
max_bytes = 1048576
ttl_s = 5
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "root.toml"
    path.write_text(text)
    return path


def test_good_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_root_config(write_config(tmp_path, GOOD))
    assert cfg.catalog == tmp_path / "catalog.json"
    assert cfg.bundles["ads"] == tmp_path / "bundles/ads/module_info.json"
    assert cfg.feature_store.path == tmp_path / "store"
    assert (cfg.trim, cfg.compression, cfg.dedup_request_features) == (False, "none", False)
    assert cfg.partitions["ads"].targets == ("127.0.0.1:5001", "127.0.0.1:5002")
    assert cfg.partitions["eng"].models == ("m3",)
    assert cfg.cache.ttl_s == 5.0 and cfg.cache.max_bytes == 1048576
    assert cfg.metrics_port == 0 and cfg.metrics_host == "127.0.0.1"
    assert cfg.settings()["trim"] == "false"
    assert cfg.max_request_features == 1024 and cfg.max_request_feature_bytes == 4 * 1024 * 1024
    assert cfg.partition_timeout.cap_ms == 2000  # the default rule
    timed = load_root_config(write_config(tmp_path, GOOD + "[partition_timeout]\np99_multiple = 3\nfloor_ms = 40\n"))
    assert (timed.partition_timeout.p99_multiple, timed.partition_timeout.floor_ms) == (3.0, 40)
    assert timed.settings()["partition_timeout"] == "3x p99 in [40, 2000] ms"


def test_absolute_paths_stay(tmp_path: Path) -> None:
    text = GOOD.replace('catalog = "catalog.json"', 'catalog = "/etc/rl/catalog.json"')
    assert load_root_config(write_config(tmp_path, text)).catalog == Path("/etc/rl/catalog.json")


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('trim = false', 'trim = false\ntrimm = true', "'trimm'"),
        ('ttl_s = 5', 'ttl_s = 5\nttl = 3', "'ttl'"),
        ('ttl_s = 5', 'ttl_s = 5\n[partition_timeout]\nfloor = 3', "'floor'"),
        ('ttl_s = 5', 'ttl_s = 5\n[partition_timeout]\nfloor_ms = 500\ncap_ms = 400', "cap_ms"),
        ('models = ["m3"]', 'models = ["m3"]\nweight = 2', "'weight'"),
        ('path = "store"', 'path = "store"\npool = 3', "'pool'"),
        ('compression = "none"', 'compression = "zstd"', "'zstd'"),
        ('trim = false', 'trim = "yes"', "trim"),
        ('default_deadline_ms = 250', 'default_deadline_ms = 0', "default_deadline_ms"),
        ('max_candidates = 1000', 'max_candidates = -1', "max_candidates"),
        ('max_candidates = 1000', 'max_candidates = 1000\nmax_request_features = 0', "max_request_features"),
        ('max_candidates = 1000', 'max_candidates = 1000\nmax_request_feature_bytes = 0', "max_request_feature_bytes"),
        ('ttl_s = 5', 'ttl_s = 0', "ttl_s"),
        ('max_bytes = 1048576', 'max_bytes = -5', "max_bytes"),
        ('targets = ["dns:///leaf-eng:5000"]', 'targets = []', "partitions.eng.targets"),
        ('models = ["m3"]', 'models = ["m1"]', "'m1' is already hosted"),
        ('kind = "local"', 'kind = "memcached"', "'memcached'"),
        ('kind = "local"', 'kind = "redis"', "feature_store.url"),
        ('kind = "local"', 'kind = "redis-cluster"', "feature_store.url"),
        ('kind = "local"\npath = "store"', 'kind = "redis-cluster"\nurl = "redis://h:1/0"', "does not fit"),
        ('kind = "local"\npath = "store"', 'kind = "redis"\nurl = "redis-cluster://h:1"', "does not fit"),
        ('catalog = "catalog.json"', '', "catalog"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    assert old in GOOD
    with pytest.raises(ValueError) as info:
        load_root_config(write_config(tmp_path, GOOD.replace(old, new)))
    assert fragment in str(info.value)


def test_redis_config(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "local"\npath = "store"', 'kind = "redis"\nurl = "redis://127.0.0.1:6379/0"\npool_size = 4\ntimeout_ms = 20')
    cfg = load_root_config(write_config(tmp_path, text))
    assert cfg.feature_store.kind == "redis" and cfg.feature_store.pool_size == 4 and cfg.feature_store.timeout_ms == 20


def test_redis_cluster_config(tmp_path: Path) -> None:
    url = "redis-cluster://10.0.0.1:7000,10.0.0.2:7000"
    text = GOOD.replace('kind = "local"\npath = "store"', f'kind = "redis-cluster"\nurl = "{url}"')
    cfg = load_root_config(write_config(tmp_path, text))
    assert (cfg.feature_store.kind, cfg.feature_store.url) == ("redis-cluster", url)


def test_unparsable_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root.toml"):
        load_root_config(write_config(tmp_path, "listen = ["))
