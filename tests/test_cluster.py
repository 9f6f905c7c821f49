"""The cluster launcher configs (cluster/*.yaml) and elastic runs on a real multi-node Ray.

1. Every config passes the validation `ray up` runs (Ray's own prepare_config + validate_config
   against ray-schema.json; the provider's network bootstrap is left out), installs this package
   with its FFCV extra and apt packages, pins Ray, uses token authentication, and binds no
   service to a public interface.
2. A sweep submitted with `ray job submit` (a script executed on the head, the same path as
   `ray submit`) to a two-node Ray with token authentication survives losing its worker node:
   every trial completes, with one MLflow run per trial and every epoch exactly once.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, VENV_BIN, free_port

CLUSTER = REPO / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
CLOUDS = {"aws", "gcp"}


def ray_up_config(path: Path) -> dict:
    """The config as `ray up` sees it after its checks: defaults filled, setup commands merged.

    This is ray.autoscaler._private.commands._bootstrap_config without the provider's bootstrap
    (which calls the cloud's API): prepare_config fills the provider defaults and merges
    setup_commands into head_/worker_setup_commands; validate_config checks ray-schema.json.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in config.get(k, [])]
    for node_type in config["available_node_types"].values():
        cmds += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return cmds


def makefile_apt_packages() -> list[str]:
    m = re.search(r"^APT_PACKAGES\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile has no APT_PACKAGES line"
    return m.group(1).split()


def repo_mounts(config: dict) -> list[str]:
    """Remote paths that file_mounts fills with this checkout (local side: the repository root,
    relative to the repository root where `ray up` runs)."""
    return [remote for remote, local in config.get("file_mounts", {}).items()
            if (REPO / os.path.expanduser(local)).resolve() == REPO]


def installs_package(cmds: list[str], mounts: list[str]) -> bool:
    """Some command pip-installs one of the mounted checkouts with the ffcv extra."""
    for cmd in cmds:
        if "pip install" not in cmd:
            continue
        for word in shlex.split(cmd.split("pip install", 1)[1]):
            m = re.fullmatch(r"(.+)\[([\w,\s-]+)\]", word)
            if not m or "ffcv" not in [e.strip() for e in m.group(2).split(",")]:
                continue
            target = m.group(1).replace("$HOME", "~").rstrip("/")
            if any(target == mount.rstrip("/") for mount in mounts):
                return True
    return False


def installs_apt(cmds: list[str], packages: list[str]) -> bool:
    return any("apt-get install" in c and all(re.search(rf"(^|\s){re.escape(p)}(\s|$)", c) for p in packages)
               for c in cmds)


HEAD_IP_VAR = "RETHINK_HEAD_IP"
LOOPBACK = {"127.0.0.1", "localhost"}


def bind_problems(config: dict) -> list[str]:
    """Services that would listen on a public or every interface; [] when there are none."""
    problems = []
    cmds = all_commands(config)
    for cmd in cmds:
        for bad in ("0.0.0.0", "[::]", "--host ::", "--host=::"):
            if bad in cmd:
                problems.append(f"{bad!r} in: {cmd}")
        for m in re.finditer(r"--(?:dashboard-host|host|node-ip-address)[= ]+(\"?)([^\s\"]+)\1", cmd):
            value = m.group(2)
            if value in LOOPBACK or value == f"${HEAD_IP_VAR}":
                continue
            try:
                if ipaddress.ip_address(value).is_private:
                    continue
            except ValueError:
                pass
            problems.append(f"{m.group(0)!r} is neither loopback, a private address nor ${HEAD_IP_VAR}: {cmd}")
        if re.search(r"\bray start\b.*--head", cmd) and not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b",
                                                                      cmd):
            problems.append(f"the head's dashboard is not bound to 127.0.0.1 (Ray's default is 0.0.0.0 in its "
                            f"cloud defaults): {cmd}")
        if "mlflow server" in cmd and not re.search(r"--host[= ]", cmd):
            problems.append(f"mlflow server without --host: {cmd}")
    if any(f"${HEAD_IP_VAR}" in c for c in cmds):
        defs = [c for c in config.get("head_setup_commands", []) if f"export {HEAD_IP_VAR}=" in c]
        if not defs or not all("ray.util.get_node_ip_address()" in c for c in defs):
            problems.append(f"${HEAD_IP_VAR} is not set from ray.util.get_node_ip_address() in head_setup_commands")
    provider = config["provider"]
    for ip in [provider.get("head_ip")] + list(provider.get("worker_ips", [])):
        if ip is not None and not ipaddress.ip_address(ip).is_private:
            problems.append(f"provider address {ip} is public")
    return problems


def keys_without_comment(text: str) -> list[str]:
    """Block-mapping keys whose line is not directly below a comment line."""
    lines = text.splitlines()
    missing = []

    def walk(node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not node.flow_style:
                    i = key.start_mark.line - 1
                    while i >= 0 and not lines[i].strip():
                        i -= 1
                    if i < 0 or not lines[i].strip().startswith("#"):
                        missing.append(f"line {key.start_mark.line + 1}: {key.value}")
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(yaml.compose(text))
    return missing


# ------------------------------------------------------------------------------------------
# 1. The configs
# ------------------------------------------------------------------------------------------
def test_the_three_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_ray_up_validation(path):
    config = ray_up_config(path)
    assert config["head_node_type"] in config["available_node_types"]


def test_validation_refuses_a_misspelled_key():
    """The check above can fail: Ray's schema refuses keys it does not know."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_setup_installs_this_package_with_ffcv(path):
    config = ray_up_config(path)
    mounts = repo_mounts(config)
    assert mounts, f"{path.name}: no file_mounts entry ships this checkout ('.')"
    packages = makefile_apt_packages()
    for role in ("head_setup_commands", "worker_setup_commands"):
        cmds = config[role]
        assert installs_package(cmds, mounts), f"{path.name}: {role} never pip-installs {mounts}[ffcv]"
        assert installs_apt(cmds, packages), f"{path.name}: {role} never apt-get installs {packages}"


def test_install_check_can_fail():
    config = ray_up_config(CLUSTER / "aws.yaml")
    mounts = repo_mounts(config)
    no_extra = [c.replace("[ffcv]", "") for c in config["head_setup_commands"]]
    assert not installs_package(no_extra, mounts)
    assert not installs_package(config["head_setup_commands"], ["~/elsewhere"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_services_bind_private_addresses_only(path):
    assert bind_problems(ray_up_config(path)) == []


def test_bind_check_catches_rays_own_cloud_defaults():
    """Ray's AWS defaults start the dashboard on 0.0.0.0: the check must refuse them."""
    config = ray_up_config(CLUSTER / "aws.yaml")
    from ray.autoscaler._private.util import _get_default_config

    config["head_start_ray_commands"] = _get_default_config({"type": "aws"})["head_start_ray_commands"]
    assert any("0.0.0.0" in p for p in bind_problems(config))
    bad = copy.deepcopy(ray_up_config(CLUSTER / "local.yaml"))
    bad["head_start_ray_commands"] = [c.replace('--host "$RETHINK_HEAD_IP"', "--host 8.8.8.8")
                                      for c in bad["head_start_ray_commands"]]
    assert any("8.8.8.8" in p for p in bind_problems(bad))


def test_head_ip_expression_gives_a_private_address():
    """The expression the configs bind MLflow to, run here: a private (or loopback) address."""
    out = subprocess.run([str(VENV_BIN / "python"), "-c", "import ray.util; print(ray.util.get_node_ip_address())"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert ipaddress.ip_address(out).is_private, out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_token_authentication_everywhere(path):
    config = ray_up_config(path)
    assert "~/.ray/auth_token" in config["file_mounts"], "the cluster's token must reach every node"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in starts), starts
    assert any("RAY_AUTH_MODE=token" in c for c in config["setup_commands"]), "clients on the nodes need it too"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_key_has_a_comment_above(path):
    assert keys_without_comment(path.read_text()) == []


@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_cloud_layout(name):
    """CPU head on demand; a 1-GPU and an 8-GPU worker type on spot; pinned Ray image; a bucket."""
    import ray

    raw = yaml.safe_load((CLUSTER / f"{name}.yaml").read_text())
    config = ray_up_config(CLUSTER / f"{name}.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0

    def spot(node_config):
        if name == "aws":
            return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        return node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"

    assert not spot(head["node_config"])
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert sorted(v["resources"].get("GPU") for v in workers.values()) == [1, 8]
    assert all(spot(v["node_config"]) for v in workers.values())
    assert all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    assert "idle_timeout_minutes" in raw and "max_workers" in raw
    for key in ("image", "head_image"):
        assert config["docker"][key].startswith(f"rayproject/ray:{ray.__version__}-"), config["docker"][key]
    scheme = {"aws": "s3://", "gcp": "gs://"}[name]
    assert any(f"RETHINK_BUCKET={scheme}" in c for c in config["setup_commands"])
    assert any("RETHINK_STORAGE=$RETHINK_BUCKET" in c for c in config["setup_commands"])
    mlflow = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1 and "--artifacts-destination \"$RETHINK_BUCKET" in mlflow[0]


def test_no_credentials_in_configs():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|BEGIN [A-Z ]*PRIVATE KEY|private_key_id", re.I)
    for path in CONFIGS:
        assert not pattern.search(path.read_text()), path.name
