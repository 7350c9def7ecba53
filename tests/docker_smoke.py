"""`make docker-test`: build the cpu image and run it with compose the way a NAS user does.

Not part of `make test`: it needs root and a container engine, and the build downloads torch. Steps:
0. a docker client that can run BuildKit builds (the Dockerfile's secret mounts need BuildKit): the first
   `docker` on PATH with the buildx plugin, or one older than 23.0 (BuildKit built in: Debian's docker.io);
   a current client without buildx cannot ("BuildKit is enabled but the buildx component is missing"), so
   the next one on PATH is taken, else the distribution's docker-buildx package is installed where it has
   one, else it stops and says what to install;
1. dockerd: use the running one, or start one and, at the end, stop it and put the host's network back
   (ip_forward and bridge sysctls, iptables rules, the docker0 bridge), whatever happened in between;
2. the base image: when the Dockerfile's base is missing and cannot be pulled, build a stand-in under the
   same tag with debootstrap + `docker import` (the Dockerfile stays the one users build);
3. build the torch-free cpu image and the converter image (torch); pip in the build sees the host's CA
   bundle as a BuildKit secret, never in a layer; in the cpu image `import torch` fails;
4. `compose up` on temp folders owned by PUID:PGID, the API token as a compose secret, ports published on
   loopback only;
5. wait for health; the hardening compose.yaml declares is in force (docker inspect: read-only root
   filesystem, every capability dropped, no-new-privileges, /tmp a tmpfs; inside: no process has a
   capability or may gain privileges, the token is in no process's environment, the root filesystem
   refuses writes, the state folder is PUID's with mode 0750, not world-writable) and the token from
   the secret is the one the API asks for;
6. drop a real photo into the inbox, wait for the output, check its owner is PUID:PGID;
7. restart the container: healthy again (time measured) and the job history is still there;
8. SIGTERM mid-job: the container stops in time with exit code 0, nothing half-written is in the outbox,
   the interrupted job is queued again and finishes after the next start;
9. a user's own weights: the torch-free image refuses to convert them and says how; `compose run
   converter` converts them into the state volume; the torch-free image then restores with them.
Prints one JSON summary (image sizes, build times, time to healthy, time to first output) on success.

Environment: DOCKER (client; default: as step 0 chooses), COMPOSE (default `docker compose`, else a v2
`docker-compose`), TORCH_INDEX (build argument, e.g. a mirror; default: PyTorch's CPU-only index, or PyPI
where that index cannot be reached), DEBIAN_MIRROR (for the stand-in base).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Completed = subprocess.CompletedProcess[str]

ROOT = Path(__file__).resolve().parent.parent
TAG = "neural-image-restore:cpu"
CONVERTER_TAG = "neural-image-restore:converter"
USER_MODEL = "realesr-general-x4v3"  # not embedded: only a user's file provides it
PUID, PGID = 4321, 4321  # not the image's default 1000, so ownership really comes from compose
BUILDKIT_BUILTIN_BEFORE = 23  # from Docker 23.0 on, the client builds with BuildKit only through buildx
CA_BUNDLE = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
SYSCTLS = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
]


def log(message: str) -> None:
    print(f"[docker-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = False, **kw: Any) -> Completed:
    return subprocess.run(cmd, check=check, text=True, capture_output=capture, **kw)


def docker(*args: str, check: bool = True, capture: bool = True) -> Completed:
    return run([*DOCKER, *args], check=check, capture=capture)


# --- a client that can build -------------------------------------------------------------------------------


def client_version(client: str) -> tuple[int, ...]:
    """The client's own version; `docker version` prints it even when no daemon answers."""
    shown = run([client, "version", "--format", "{{.Client.Version}}"], capture=True, check=False).stdout
    match = re.match(r"(\d+)\.(\d+)", shown.strip())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def builds_with_buildkit(client: str) -> bool:
    if run([client, "buildx", "version"], capture=True, check=False).returncode == 0:
        return True
    return (0, 0) < client_version(client) < (BUILDKIT_BUILTIN_BEFORE, 0)


def docker_clients() -> list[str]:
    """Every `docker` on PATH, in PATH order, each file once."""
    found: list[str] = []
    for folder in os.get_exec_path():
        candidate = Path(folder) / "docker"
        if os.access(candidate, os.X_OK) and str(candidate.resolve()) not in map(_resolved, found):
            found.append(str(candidate))
    return found


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def apt_candidate(package: str) -> bool:
    if shutil.which("apt-cache") is None:
        return False
    policy = run(["apt-cache", "policy", package], capture=True, check=False).stdout
    return "Candidate:" in policy and "Candidate: (none)" not in policy


def choose_docker() -> list[str]:
    """$DOCKER when set; else the first client on PATH that builds with BuildKit; else install buildx."""
    if os.environ.get("DOCKER"):
        return shlex.split(os.environ["DOCKER"])
    clients = docker_clients()
    for client in clients:
        if builds_with_buildkit(client):
            if client != clients[0]:
                version = ".".join(map(str, client_version(clients[0])))
                log(f"{clients[0]} ({version}) cannot build without buildx: using {client}")
            return [client]
    if clients and apt_candidate("docker-buildx"):
        log("no docker client here builds with BuildKit: installing docker-buildx")
        run(
            ["apt-get", "install", "-y", "-qq", "docker-buildx"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if builds_with_buildkit(clients[0]):
            return [clients[0]]
    raise RuntimeError(
        f"no docker client on PATH builds with BuildKit ({clients or 'none found'}): install the buildx "
        "plugin (docker-buildx) or Debian's docker.io, or set DOCKER to a client that has it"
    )


DOCKER: list[str] = []  # main() sets it


# --- the host's network settings, which starting dockerd changes ----------------------------------------


class HostNetwork:
    """What dockerd touches when it starts: sysctls, iptables tables and the docker0 bridge."""

    def __init__(self) -> None:
        self.sysctls = {path: Path(path).read_text() for path in SYSCTLS if Path(path).exists()}
        self.rules = {tool: self._save(tool) for tool in ("iptables", "ip6tables")}
        self.links = self._links()

    @staticmethod
    def _save(tool: str) -> str:
        if shutil.which(f"{tool}-save") is None:
            return ""
        return run([f"{tool}-save"], capture=True, check=False).stdout

    @staticmethod
    def _links() -> set[str]:
        """dockerd's bridges only: other programs on the host may add and remove links meanwhile."""
        return {name for name in os.listdir("/sys/class/net") if name == "docker0" or name.startswith("br-")}

    def restore(self) -> None:
        for tool, saved in self.rules.items():
            if shutil.which(f"{tool}-save") is None:
                continue
            now = self._save(tool)
            saved_tables = set(re.findall(r"^\*(\w+)", saved, flags=re.MULTILINE))
            for table in set(re.findall(r"^\*(\w+)", now, flags=re.MULTILINE)) - saved_tables:
                # A table that did not exist before: empty it and open its built-in chains again.
                run([tool, "-t", table, "-F"], check=False)
                run([tool, "-t", table, "-X"], check=False)
                for chain in re.findall(r"^:(\w+) (?:DROP|ACCEPT)", _table(now, table), flags=re.MULTILINE):
                    run([tool, "-t", table, "-P", chain, "ACCEPT"], check=False)
                if shutil.which("nft") and "nf_tables" in run([tool, "--version"], capture=True).stdout:
                    # iptables-nft leaves the emptied table behind; it was not there before.
                    family = "ip" if tool == "iptables" else "ip6"
                    run(["nft", "delete", "table", family, table], check=False, capture=True)
            if saved.strip():
                run([f"{tool}-restore"], input=saved, check=False)
        for link in self._links() - self.links:
            run(["ip", "link", "delete", link], check=False)
        for path, value in self.sysctls.items():
            Path(path).write_text(value)

    def differences(self) -> list[str]:
        after = HostNetwork()
        diffs = [p for p, v in self.sysctls.items() if after.sysctls.get(p) != v]
        diffs += [t for t in self.rules if _rules(after.rules[t]) != _rules(self.rules[t])]
        diffs += sorted(after.links ^ self.links)
        return diffs


def _table(dump: str, table: str) -> str:
    match = re.search(rf"^\*{table}$(.*?)^COMMIT$", dump, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def _rules(dump: str) -> list[str]:
    """A dump without comments and counters, for comparing."""
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in dump.splitlines() if not line.startswith("#")]


@contextlib.contextmanager
def dockerd_running(work: Path) -> Iterator[None]:
    if docker("info", check=False).returncode == 0:
        log("using the running dockerd")
        yield
        return
    network = HostNetwork()
    log("starting dockerd (the host's network settings are restored afterwards)")
    output = (work / "dockerd.log").open("w")
    process = subprocess.Popen(["dockerd"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while docker("info", check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {work / 'dockerd.log'}")
            time.sleep(1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        network.restore()
        left = network.differences()
        log("host network restored" if not left else f"host network NOT fully restored: {left}")


# --- images ------------------------------------------------------------------------------------------------


def base_image() -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert match, "Dockerfile has no ARG BASE_IMAGE"
    return match.group(1)


def ensure_base_image(work: Path) -> None:
    image = base_image()
    if docker("image", "inspect", image, check=False).returncode == 0:
        return
    if docker("pull", image, check=False).returncode == 0:
        return
    suite = re.search(r"debian:(\w+)", image)
    if suite is None or shutil.which("debootstrap") is None:
        raise RuntimeError(f"{image} cannot be pulled; a stand-in needs a debian:SUITE tag and debootstrap")
    log(f"{image} cannot be pulled: building a stand-in with debootstrap + docker import")
    rootfs = work / "rootfs"
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    run(["debootstrap", "--variant=minbase", suite.group(1), str(rootfs), mirror], capture=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run([*DOCKER, "import", "-c", 'CMD ["bash"]', "-", image], stdin=tar.stdout, capture=True)
    tar.wait()
    shutil.rmtree(rootfs)


CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the Dockerfile's default for FLAVOUR=cpu
PYPI = "https://pypi.org/simple"


def torch_index() -> str | None:
    """$TORCH_INDEX; else None (the Dockerfile's CPU-only index) when that index answers here, else PyPI,
    whose torch is the CUDA build: the builder stage and the converter image get bigger, the torch-free
    image stays the same."""
    if os.environ.get("TORCH_INDEX"):
        return os.environ["TORCH_INDEX"]
    try:
        with urllib.request.urlopen(f"{CPU_TORCH_INDEX}/torch/", timeout=15):
            return None
    except OSError as error:
        log(f"{CPU_TORCH_INDEX} unreachable ({error}): torch from PyPI (the CUDA build) instead")
        return PYPI


def build_image(tag: str, runtime: str, index: str | None) -> float:
    """One image as compose.yaml builds it (FLAVOUR cpu; RUNTIME slim: no torch, torch: the converter)."""
    command = [*DOCKER, "build", "--progress=plain", "-t", tag, "--build-arg", "FLAVOUR=cpu"]
    command += ["--build-arg", f"RUNTIME={runtime}"]
    if CA_BUNDLE.is_file():
        command += ["--secret", f"id=pip_cert,src={CA_BUNDLE}"]
    if index:
        command += ["--build-arg", f"TORCH_INDEX={index}"]
    log("building " + " ".join(command[len(DOCKER) :]))
    started = time.monotonic()
    run([*command, str(ROOT)], env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return time.monotonic() - started


def image_size_mb(tag: str) -> int:
    return round(int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6)


def check_torch_free() -> None:
    """The daemon's image has no torch (nor torchvision, spandrel) to import; the converter's has."""
    for module in ("torch", "torchvision", "spandrel"):
        probe = docker("run", "--rm", "--network", "none", "--entrypoint", "python", TAG, "-c",
                       f"import {module}", check=False)  # fmt: skip
        assert probe.returncode != 0 and f"No module named '{module}'" in probe.stderr, probe
    probe = docker("run", "--rm", "--network", "none", "--entrypoint", "python", CONVERTER_TAG, "-c",
                   "import torch; print(torch.__version__)")  # fmt: skip
    version = probe.stdout.strip()
    log(f"{TAG}: torch, torchvision and spandrel not importable; {CONVERTER_TAG}: torch {version}")


# --- compose -----------------------------------------------------------------------------------------------


def compose_command() -> list[str]:
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if docker("compose", "version", check=False).returncode == 0:
        return [*DOCKER, "compose"]
    standalone = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if standalone and "v2." in run([standalone, "version"], capture=True, check=False).stdout:
        return [standalone]
    raise RuntimeError("no Compose v2: install the docker compose plugin, or set COMPOSE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The project's compose.yaml plus a test override, on temp folders."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.photos = work / "photos"
        self.site_port, self.api_port = free_port(), free_port()
        for name in ("inbox", "outbox", "failed", "archive"):
            (self.photos / name).mkdir(parents=True)
        (work / "weights").mkdir()
        for path in [self.photos, *self.photos.iterdir(), work / "weights"]:
            os.chown(path, PUID, PGID)
        # The API token, as a user makes it: readable by PUID only (Compose bind-mounts the file as it is).
        self.token = secrets.token_urlsafe(32)
        token_file = work / "restorer_api_token"
        token_file.write_text(self.token + "\n")
        os.chown(token_file, PUID, PGID)
        token_file.chmod(0o400)
        override = work / "compose.test.yaml"
        # Ports on loopback only (!override replaces the list instead of adding to it); short waits;
        # a short stop grace so SIGTERM interrupts the running image and the requeue path is exercised.
        override.write_text(
            "services:\n"
            "  restorer:\n"
            "    pull_policy: never\n"
            "    ports: !override\n"
            f'      - "127.0.0.1:{self.site_port}:8091"\n'
            f'      - "127.0.0.1:{self.api_port}:8001"\n'
            "    environment:\n"
            '      RESTORER_STABILITY_SECONDS: "1"\n'
            '      RESTORER_POLL_SECONDS: "1"\n'
            '      RESTORER_STOP_GRACE_SECONDS: "2"\n'
        )
        self.files = ["-f", str(ROOT / "compose.yaml"), "-f", str(override)]
        self.project = f"restorer-docker-test-{os.getpid()}"
        self.env = {
            **os.environ,
            "PHOTOS_DIR": str(self.photos),
            "WEIGHTS_DIR": str(work / "weights"),
            "API_TOKEN_FILE": str(token_file),
            "PUID": str(PUID),
            "PGID": str(PGID),
            "TZ": "Europe/Berlin",
        }
        self.compose = compose_command()

    def __call__(self, *args: str, capture: bool = False, check: bool = True) -> Completed:
        command = [*self.compose, "-p", self.project, "--project-directory", str(ROOT), *self.files, *args]
        return run(command, env=self.env, capture=capture, check=check)

    def api(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.api_port}/api/v1/{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def post_status(self, path: str, token: str | None = None) -> int:
        """The HTTP status of an empty POST to the API, with the token or without."""
        url = f"http://127.0.0.1:{self.api_port}/api/v1/{path}"
        request = urllib.request.Request(url, data=b"", method="POST")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def wait_healthy(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                if self.api("health").get("status") in ("ok", "degraded"):
                    return time.monotonic() - started
            except OSError:
                pass  # not listening yet, or 503 while the worker loads
            time.sleep(2)
        raise TimeoutError(f"not healthy after {timeout:.0f} s:\n{self.logs()}")

    def container(self) -> str:
        return self("ps", "-q", "restorer", capture=True).stdout.strip()

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "60", capture=True).stdout

    def jobs(self) -> list[dict[str, Any]]:
        return self.api("jobs?limit=100")["jobs"]

    def wait_job(self, name: str, states: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job in self.jobs():
                if job["name"] == name and job["state"] in states:
                    return job
            time.sleep(1)
        raise TimeoutError(f"{name} not {states} after {timeout:.0f} s:\n{self.logs()}")


def drop_photo(inbox: Path, name: str, size: int) -> None:
    """A real photo (skimage's astronaut, a test dependency), written under a dot name and renamed in,
    as a careful copy tool does; owned by PUID like files a share user drops."""
    from PIL import Image
    from skimage import data

    picture = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    temp = inbox / f".{name}.part"
    temp.write_bytes(buffer.getvalue())
    os.chown(temp, PUID, PGID)
    temp.rename(inbox / name)


def check_outbox_complete(outbox: Path) -> list[str]:
    """Every file in the outbox is a complete image; no temp or partial file is left."""
    from PIL import Image

    names = []
    for path in sorted(p for p in outbox.rglob("*") if p.is_file()):
        assert not path.name.startswith("."), f"temp file left in the outbox: {path.name}"
        with Image.open(path) as image:
            image.load()  # raises on a truncated file
        names.append(path.name)
    return names


# Run inside the container (as its user, with its capabilities and environment): every process's
# capabilities, no_new_privs flag and environment, the state folder's owner and mode, and what a write to
# the image's own folders and to /tmp does. The token is read from the secret here, so it never travels
# on a command line.
INSIDE_PROBE = r"""
import errno, json, os, pathlib
token = pathlib.Path("/run/secrets/restorer_api_token").read_bytes().strip()
processes = []
for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit() or int(entry.name) == os.getpid():
        continue
    try:
        status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
        environ = (entry / "environ").read_bytes()
        command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        continue  # ended meanwhile
    processes.append({
        "pid": int(entry.name), "command": command,
        "caps": {key: status[key].strip() for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": status["NoNewPrivs"].strip(),
        "token_in_environ": token in environ,
        "token_variable": b"RESTORER_API_TOKEN=" in environ,
    })
def write(path):
    try:
        pathlib.Path(path).write_bytes(b"x")
        os.unlink(path)
        return "written"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
state = os.stat("/var/lib/restorer")
print(json.dumps({
    "processes": processes,
    "state": {"uid": state.st_uid, "gid": state.st_gid, "mode": oct(state.st_mode & 0o7777)},
    "writes": {path: write(path) for path in ("/opt/restorer/probe", "/etc/probe", "/var/tmp/probe",
                                              "/tmp/probe", "/var/lib/restorer/probe")},
}))
"""


def check_hardening(stack: Stack) -> dict[str, Any]:
    """What compose.yaml declares is what the running container has, seen from the engine and from
    inside; the token reaches the daemon from the secret file and from nowhere else."""
    container = stack.container()
    inspected = json.loads(docker("inspect", container).stdout)[0]
    host = inspected["HostConfig"]
    assert host["ReadonlyRootfs"] is True, host["ReadonlyRootfs"]
    assert [cap.upper() for cap in host["CapDrop"] or []] == ["ALL"] and not host["CapAdd"], host
    assert "no-new-privileges:true" in (host["SecurityOpt"] or []), host["SecurityOpt"]
    assert "/tmp" in (host["Tmpfs"] or {}), host["Tmpfs"]
    environment = inspected["Config"]["Env"]
    assert "RESTORER_API_TOKEN_FILE=/run/secrets/restorer_api_token" in environment, environment
    assert not any(stack.token in item or item.startswith("RESTORER_API_TOKEN=") for item in environment)

    probe = json.loads(docker("exec", container, "python", "-c", INSIDE_PROBE).stdout)
    processes = probe["processes"]
    commands = [process["command"] for process in processes]
    assert any("restorer serve" in command for command in commands), commands
    assert len(processes) >= 3, commands  # tini, the daemon, its worker
    for process in processes:
        assert set(process["caps"].values()) == {"0000000000000000"}, process
        assert process["no_new_privs"] == "1", process
        assert not process["token_in_environ"] and not process["token_variable"], process
    assert probe["state"] == {"uid": PUID, "gid": PGID, "mode": "0o750"}, probe["state"]
    writes = probe["writes"]
    image_paths = ("/opt/restorer/probe", "/etc/probe", "/var/tmp/probe")
    assert {writes[path] for path in image_paths} == {"EROFS"}, writes
    assert writes["/tmp/probe"] == writes["/var/lib/restorer/probe"] == "written", writes

    # The daemon took the token from the secret: without it a POST is 401 (without any token configured
    # it would be 403 loopback-only), with it the request goes through (404: no such job).
    assert stack.post_status("jobs/999999/retry") == 401
    assert stack.post_status("jobs/999999/retry", stack.token) == 404
    log(
        f"hardened: read-only root, CapDrop ALL, no-new-privileges, /tmp tmpfs; {len(processes)} "
        f"processes without capabilities, token in no environment; state {probe['state']}; the secret's "
        "token is in force"
    )
    return {"processes_checked": len(processes), "state_dir": probe["state"]}


def check_weights_fetch(stack: Stack) -> None:
    """`restorer weights fetch` through `compose run`: a mirror container on the project's network serves a
    GFPGANv1.4.pth that is not the official file; the command downloads it, refuses it (sha256) and leaves
    nothing in the weights folder. (The real release host is not reachable from here.)"""
    mirror_dir = stack.work / "mirror"
    mirror_dir.mkdir()
    (mirror_dir / "GFPGANv1.4.pth").write_bytes(os.urandom(300_000))
    mirror = f"{stack.project}-mirror"
    docker("run", "-d", "--rm", "--name", mirror, "--network", f"{stack.project}_default",
           "-v", f"{mirror_dir}:/srv:ro", "--entrypoint", "python", TAG,
           "-m", "http.server", "8000", "--directory", "/srv")  # fmt: skip
    try:
        time.sleep(3)  # the server binds in well under a second; no health check for a one-off
        fetched = stack("run", "--rm", "--no-deps", "restorer", "weights", "fetch", "GFPGANv1.4",
                        "--mirror", f"http://{mirror}:8000", capture=True, check=False)  # fmt: skip
    finally:
        docker("rm", "-f", mirror, check=False)
    # The command exits 1 here, but `compose run` does not pass every engine's exit code on (Compose v2.40
    # with Docker 20.10 reports 0), so the message is what is checked.
    assert "nothing was written" in fetched.stderr, fetched.stdout + fetched.stderr
    assert list((stack.work / "weights").iterdir()) == []
    listing = stack("run", "--rm", "--no-deps", "restorer", "weights", capture=True)
    assert "GFPGANv1.4" in listing.stdout and "missing" in listing.stdout, listing.stdout
    log("weights fetch via compose run: fetched from the mirror container, wrong sha256 refused, none kept")


def write_user_weights(path: Path) -> None:
    """A user's own upscaler file: a randomly initialised Compact of the official realesr-general-x4v3
    shape (torch on the host: `make install` put it in the venv; the image it goes to has none)."""
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    torch.save({"params_ema": Compact(num_feat=64, num_conv=32, upscale=4).state_dict()}, path)
    os.chown(path, PUID, PGID)


def cli_restore(stack: Stack, folder: Path) -> Completed:
    """`restorer restore` with the user's model in the torch-free image, on the state volume's cache."""
    return stack("run", "--rm", "--no-deps", "-v", f"{folder}:/cli", "restorer", "restore", "--model",
                 USER_MODEL, "/cli/in.jpg", "-o", "/cli/out", capture=True, check=False)  # fmt: skip


def check_user_weights(stack: Stack) -> float:
    """A weights file the user adds: the torch-free image cannot convert it and says how; the converter
    service converts it into the state volume; then the torch-free image restores with it. The seconds
    the converter took."""
    from PIL import Image
    from skimage import data

    folder = stack.work / "cli"
    folder.mkdir()
    Image.fromarray(data.astronaut()).resize((96, 96)).save(folder / "in.jpg", quality=92)
    for path in (folder, folder / "in.jpg"):
        os.chown(path, PUID, PGID)
    write_user_weights(stack.work / "weights" / f"{USER_MODEL}.pth")
    refused = cli_restore(stack, folder)
    assert "needs torch" in refused.stderr and "converter" in refused.stderr, refused.stdout + refused.stderr
    assert not list((folder / "out").glob("*")) if (folder / "out").exists() else True
    log(f"the torch-free image refuses to convert {USER_MODEL} and names the converter")
    started = time.monotonic()
    converted = stack("run", "--rm", "converter", capture=True, check=False)
    seconds = time.monotonic() - started
    assert f"{USER_MODEL}: Compact-" in converted.stdout, converted.stdout + converted.stderr
    restored = cli_restore(stack, folder)
    outputs = sorted((folder / "out").glob("*"))
    assert len(outputs) == 1 and "1 restored" in restored.stderr, restored.stdout + restored.stderr
    with Image.open(outputs[0]) as image:
        assert image.size == (384, 384), image.size
    log(
        f"converter service: {USER_MODEL} converted in {seconds:.0f} s; the torch-free image restored with it"
    )
    return seconds


def smoke(stack: Stack) -> dict[str, Any]:
    result: dict[str, Any] = {}
    started = time.monotonic()
    stack("up", "-d", "--no-build")
    result["first_start_healthy_s"] = round(stack.wait_healthy(timeout=1800), 1)
    log(f"healthy after {result['first_start_healthy_s']} s (first start: copies the prebuilt IR, compiles)")
    result["hardening"] = check_hardening(stack)

    drop_photo(stack.photos / "inbox", "first.jpg", 256)
    dropped = time.monotonic()
    job = stack.wait_job("first.jpg", {"done", "failed"}, timeout=1800)
    assert job["state"] == "done", job
    result["first_output_s"] = round(time.monotonic() - dropped, 1)
    output = stack.photos / "outbox" / "first.jpg"
    info = output.stat()
    assert (info.st_uid, info.st_gid) == (PUID, PGID), (info.st_uid, info.st_gid)
    log(f"first output after {result['first_output_s']} s, owner {info.st_uid}:{info.st_gid}")

    check_weights_fetch(stack)
    result["converter_run_s"] = round(check_user_weights(stack), 1)

    stack("restart")
    result["restart_healthy_s"] = round(stack.wait_healthy(timeout=600), 1)
    history = {j["name"]: j["state"] for j in stack.jobs()}
    assert history.get("first.jpg") == "done", history
    log(f"restarted: healthy after {result['restart_healthy_s']} s, history kept: {history}")

    # 288x288: seconds on a quiet CPU (the stop lands well inside it) and minutes on a loaded one.
    drop_photo(stack.photos / "inbox", "second.jpg", 288)
    stack.wait_job("second.jpg", {"processing"}, timeout=300)
    time.sleep(3)
    container = stack.container()
    stopped = time.monotonic()
    stack("stop")  # SIGTERM, then the daemon's grace, then compose's stop_grace_period
    result["stop_s"] = round(time.monotonic() - stopped, 1)
    state = json.loads(docker("inspect", container).stdout)[0]["State"]
    assert state["ExitCode"] == 0, state
    names = check_outbox_complete(stack.photos / "outbox")
    assert "second.jpg" not in names, "stopped mid-job, yet an output exists"
    log(f"SIGTERM mid-job: exit 0 after {result['stop_s']} s, outbox holds only complete files: {names}")

    stack("start")
    stack.wait_healthy(timeout=600)
    job = stack.wait_job("second.jpg", {"done", "failed"}, timeout=1800)  # a shared 2-core box is slow
    assert job["state"] == "done" and job["attempts"] >= 1, job
    check_outbox_complete(stack.photos / "outbox")
    log(f"the interrupted job was queued again and finished (attempts {job['attempts']})")
    result["total_s"] = round(time.monotonic() - started, 1)
    return result


def main() -> int:
    # A SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: compose down, dockerd stopped, network restored.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    if os.geteuid() != 0:
        print("make docker-test needs root (it may start dockerd)", file=sys.stderr)
        return 2
    DOCKER[:] = choose_docker()
    log(f"docker client: {' '.join(DOCKER)}")
    with tempfile.TemporaryDirectory(prefix="restorer-docker-test-") as tmp:
        work = Path(tmp)
        with dockerd_running(work):
            ensure_base_image(work)
            index = torch_index()
            summary: dict[str, Any] = {"torch_index": index or CPU_TORCH_INDEX}
            summary |= {"image": TAG, "build_s": round(build_image(TAG, "slim", index))}
            summary["image_size_mb"] = image_size_mb(TAG)
            summary["converter_image"] = CONVERTER_TAG
            summary["converter_build_s"] = round(build_image(CONVERTER_TAG, "torch", index))
            summary["converter_image_size_mb"] = image_size_mb(CONVERTER_TAG)
            sizes = summary["image_size_mb"], summary["converter_image_size_mb"]
            log(f"sizes: {TAG} {sizes[0]} MB, {CONVERTER_TAG} {sizes[1]} MB")
            check_torch_free()
            stack = Stack(work)
            try:
                summary |= smoke(stack)
            finally:
                stack("down", "-v", "--timeout", "90")
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
