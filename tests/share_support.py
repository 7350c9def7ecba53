"""Real network shares for tests: a Samba server (smbd) on a loopback port and an sshd mounted with sshfs,
each with its whole configuration, keys and state in the test's temp folder (no system config is read
or written). They need root (smbd's `force user`, sshd's privilege separation, FUSE mounts) and the
Debian packages `make system-deps` installs; `skip_unless_available` says which is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port

SSHD = "/usr/sbin/sshd"


def skip_unless_available(*programs: str, fuse: bool = False) -> None:
    if os.geteuid() != 0:
        pytest.skip("real-share tests need root (smbd force user, sshd, FUSE mounts)")
    missing = [p for p in programs if shutil.which(p) is None and not Path(p).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: `make system-deps` installs them")
    if fuse and not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing: this machine cannot mount FUSE filesystems")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port}: {log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SambaServer:
    """smbd exporting `share_path` as //127.0.0.1/inbox on a free loopback port, guest access mapped to
    root (the daemon's user here), SMB2 and later only."""

    def __init__(self, root: Path, share_path: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        for folder in ("private", "lock", "pid", "state", "cache", "logs"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.conf = root / "smb.conf"
        self.conf.write_text(
            "[global]\n"
            f"  smb ports = {self.port}\n"
            "  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
            f"  private dir = {root}/private\n  lock directory = {root}/lock\n"
            f"  pid directory = {root}/pid\n  state directory = {root}/state\n"
            f"  cache directory = {root}/cache\n  ncalrpc dir = {root}/state/ncalrpc\n"
            f"  log file = {root}/logs/log.%m\n"
            "  server role = standalone server\n  map to guest = Bad User\n  guest account = root\n"
            "  disable netbios = yes\n  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n"
            "  disable spoolss = yes\n  server min protocol = SMB2\n"
            # 64 KiB writes: a client's upload reaches the disk in many pieces, as over a slow link.
            "  smb2 max write = 65536\n  smb2 max read = 65536\n  smb2 max trans = 65536\n"
            f"  client min protocol = SMB2\n\n[inbox]\n  path = {share_path}\n  read only = no\n"
            "  guest ok = yes\n  force user = root\n"
        )
        self.log = root / "smbd.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-d1", "-s", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # smbd signals its whole process group when it stops
            )
        _wait_for_port(self.port, self.process, self.log)

    def client(self, commands: str) -> subprocess.Popen[str]:
        """smbclient running `commands` (separated by ';') as a guest."""
        return subprocess.Popen(
            [
                "smbclient",
                "//127.0.0.1/inbox",
                "-p",
                str(self.port),
                "-N",
                "-s",
                str(self.conf),
                "-c",
                commands,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> None:
        _stop(self.process)


class SshfsMount:
    """An sshd on a free loopback port serving `server_dir` over SFTP, mounted at `mount_point` with sshfs
    (a `fuse.sshfs` mount: the GPU box's view of a NAS folder). `subtype` renames the mount's type to
    `fuse.<subtype>`, standing in for FUSE share clients outside today's list (smbnetfs, rclone forks)."""

    def __init__(self, root: Path, server_dir: Path, mount_point: Path, subtype: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.mount_point = mount_point
        self.port = free_port()
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        conf = root / "sshd_config"
        conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {root}/sshd.pid\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        self.log = root / "sshd.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_port(self.port, self.process, self.log)
        mount_point.mkdir(parents=True, exist_ok=True)
        options = (
            f"IdentityFile={root}/client_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes"
            + (f",subtype={subtype}" if subtype else "")
        )
        subprocess.run(
            ["sshfs", "-p", str(self.port), f"root@127.0.0.1:{server_dir}", str(mount_point), "-o", options],
            check=True,
            timeout=30,
        )

    def stop(self) -> None:
        subprocess.run(["fusermount", "-u", "-z", str(self.mount_point)], check=False)
        _stop(self.process)


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SmbnetfsMount:
    """smbnetfs (FUSE, type `fuse.smbnetfs`) mounted at `mount_point`, its configuration in `home`; the
    share is then `mount_point/127.0.0.1/inbox`. libsmbclient only dials port 445, so the server must
    listen there."""

    def __init__(self, home: Path, mount_point: Path) -> None:
        (home / ".smb").mkdir(parents=True, exist_ok=True)
        (home / ".smb" / "smb.conf").write_text("[global]\n  client min protocol = SMB2\n")
        (home / ".smb" / "smbnetfs.conf").write_text("smb_query_browsers false\nshow_hidden_hosts true\n")
        for name in ("smb.conf", "smbnetfs.conf"):
            (home / ".smb" / name).chmod(0o600)
        mount_point.mkdir(parents=True, exist_ok=True)
        self.mount_point = mount_point
        subprocess.run(
            ["smbnetfs", str(mount_point)], check=True, timeout=30, env={**os.environ, "HOME": str(home)}
        )

    def stop(self) -> None:
        subprocess.run(["fusermount", "-u", "-z", str(self.mount_point)], check=False)
