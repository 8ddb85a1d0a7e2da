"""deploy/ray-cluster.yaml, the ``ray up`` file the README gives, is a valid Ray cluster configuration."""

from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs Ray: pip install -e '.[ray]' (requirements-dev.txt has it)")
yaml = pytest.importorskip("yaml")

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "ray-cluster.yaml"


def test_the_cluster_file_passes_rays_own_schema_and_installs_attnviz_on_every_node():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CONFIG.read_text())
    prepared = prepare_config(config)  # Ray's own defaults filled in, then checked, as ray up does
    validate_config(prepared)  # raises on a key Ray does not know or a value of the wrong type
    assert prepared["provider"]["type"] == "local"
    assert any("attnviz[ray]" in command for command in prepared["setup_commands"])
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("RAY_USAGE_STATS_ENABLED=0" in c for c in starts if "ray start" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in prepared["head_start_ray_commands"])
