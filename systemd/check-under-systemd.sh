#!/usr/bin/env bash
# `make systemd-test`: run systemd/restorer.service, unchanged, under a real systemd (PID 1 in a
# systemd-nspawn container) and restore one photo through it. Exits non-zero on any failure.
#
# Needs root, systemd-nspawn (systemd-container) and, the first time, debootstrap and a Debian mirror.
# Not part of `make test`: it is slow (first start converts the model) and needs root and network.
#
# Host side (no argument):
#   1. a Debian bookworm tree in $ROOTFS (debootstrap once, reused afterwards);
#   2. this checkout copied to $ROOTFS/opt/restorer (tracked and untracked, not ignored files);
#   3. boot it: systemd-nspawn --boot --private-network, this project's venv bound read-only at its own
#      path; a oneshot unit inside runs this script with --inside, then `systemctl exit <status>`,
#      which ends the container with that status.
# Inside (--inside), as root in the booted container, the steps systemd/README.md gives a user:
#   4. /opt/restorer/.venv: a venv of Debian's python3 that sees the host venv's packages (the host
#      venv's own interpreter may live under /root, which the unit's ProtectHome= hides);
#   5. users, /srv/photos folders, /etc/restorer/restorer.toml (fast model, no faces), the api_token
#      credential (0600), the unit copied to /etc/systemd/system, `systemd-analyze verify` silent;
#   6. `systemctl start restorer` (returns after READY=1), the API answers on loopback, the credential
#      was loaded (a POST without the token is refused with 401), the watchdog was pinged;
#   7. a PNG dropped in the inbox appears restored in the outbox and the original in archive/ (moved
#      across two ReadWritePaths mounts); in the service's mount namespace the share's root is read-only
#      and its folders are not; the journal has no SIGSYS, EPERM or permission errors and the service
#      never restarted;
#   8. `systemctl stop restorer` ends it cleanly (result "success", exit status 0) within TimeoutStopSec.
#
# Environment: ROOTFS (default /var/tmp/restorer-sysd-root), VENV (default the checkout's .venv),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), CHECK_TIMEOUT (seconds,
# default 1500).
set -euo pipefail

SELF=$(readlink -f "$0")
NAME=restorer-check

log() { echo "[systemd-test $(date +%H:%M:%S)] $*"; }

host_main() {
    local root rootfs venv mirror site status
    root=$(cd "$(dirname "$SELF")/.." && pwd)
    rootfs=${ROOTFS:-/var/tmp/restorer-sysd-root}
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    venv=${VENV:-$root/.venv}
    venv=$(readlink -f "$venv")
    [[ $(id -u) == 0 ]] || { log "needs root (systemd-nspawn)"; exit 2; }
    command -v systemd-nspawn >/dev/null || { log "needs systemd-nspawn: apt-get install systemd-container"; exit 2; }
    [[ -x $venv/bin/python ]] || { log "no venv at $venv (make install, or set VENV=)"; exit 2; }
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

    if [[ ! -x $rootfs/usr/bin/python3 ]]; then
        command -v debootstrap >/dev/null || { log "needs debootstrap: apt-get install debootstrap"; exit 2; }
        log "debootstrap bookworm into $rootfs (once)"
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-venv,libgomp1 \
            bookworm "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1 \
            || { tail -20 "$rootfs.debootstrap.log"; exit 1; }
    fi
    # The container's python3 must be the venv's minor version, or its compiled packages do not load.
    local want have
    want=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    have=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $want == "$have" ]] || { log "venv is Python $want, the container has $have"; exit 2; }

    log "copying $root to $rootfs/opt/restorer"
    rm -rf "$rootfs/opt/restorer"
    mkdir -p "$rootfs/opt/restorer"
    (cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --ignore-failed-read) \
        | tar -C "$rootfs/opt/restorer" -xf -
    # A worktree's .venv may be a symlink to a shared venv (git does not ignore a link with `.venv/`):
    # inside, step 4 makes the venv at this path itself.
    rm -rf "$rootfs/opt/restorer/.venv"
    install -m 0755 "$SELF" "$rootfs/usr/local/sbin/$NAME"
    printf '%s\n%s\n' "$venv" "$site" >"$rootfs/etc/$NAME.paths"
    cat >"$rootfs/etc/systemd/system/$NAME.service" <<EOF
[Unit]
Description=Run restorer.service under this systemd and check it
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/$NAME --inside
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
    ln -sf "../$NAME.service" "$rootfs/etc/systemd/system/multi-user.target.wants/$NAME.service"
    # Every run starts from nothing: no job database, no converted model, no photos.
    rm -rf "$rootfs/var/tmp/$NAME.status" "$rootfs/var/tmp/$NAME.log" "$rootfs/srv/photos" \
        "$rootfs/var/lib/restorer" "$rootfs/etc/restorer"

    log "booting systemd in $rootfs (systemd-nspawn --boot)"
    # --register=no --keep-unit: the host needs no systemd/machined of its own (a CI runner or a
    # container may have none); --private-network: the ports stay inside, only loopback there.
    status=0
    timeout --kill-after=30 "${CHECK_TIMEOUT:-1500}" systemd-nspawn --quiet --boot --register=no --keep-unit \
        --private-network --console=pipe --machine="$NAME" --directory="$rootfs" \
        --bind-ro="$venv" </dev/null || status=$?
    if [[ ! -f $rootfs/var/tmp/$NAME.status ]]; then
        log "FAIL: the check never finished (nspawn status $status)"
        exit 1
    fi
    cat "$rootfs/var/tmp/$NAME.log" || true
    status=$(cat "$rootfs/var/tmp/$NAME.status")
    [[ $status == 0 ]] && log "PASS" || log "FAIL (status $status)"
    exit "$status"
}

# --- inside the container -------------------------------------------------------------------------------

finish() {
    local status=$1
    echo "$status" >"/var/tmp/$NAME.status"
    if [[ $status != 0 ]]; then
        systemctl --no-pager status restorer || true
        journalctl --no-pager -b -u restorer | tail -60 || true
    fi
    systemctl exit "$status"
    exit "$status"
}

fail() {
    log "FAIL: $*"
    finish 1
}

seconds_since() { echo $(($(date +%s) - $1)); }

api() {
    # api METHOD PATH [TOKEN] -> prints the HTTP status code
    /opt/restorer/.venv/bin/python - "$@" <<'EOF'
import sys
import urllib.error
import urllib.request

method, path = sys.argv[1], sys.argv[2]
request = urllib.request.Request(f"http://127.0.0.1:8001{path}", method=method, data=b"" if method == "POST" else None)
if len(sys.argv) > 3:
    request.add_header("Authorization", f"Bearer {sys.argv[3]}")
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError as error:
    print(f"error {error}")
EOF
}

inside_main() {
    local venv site
    { read -r venv; read -r site; } <"/etc/$NAME.paths"
    exec > >(tee "/var/tmp/$NAME.log") 2>&1
    # A command that fails under `set -e` ends this script: report it, or the container would run on
    # until CHECK_TIMEOUT with no status.
    trap '[[ -f /var/tmp/$NAME.status ]] || { log "FAIL: a command failed (exit $?)"; finish 1; }' EXIT
    log "systemd $(systemctl --version | head -1 | cut -d' ' -f2), kernel $(uname -r)"

    # 4. The venv the unit's ExecStart names.
    python3 -m venv --without-pip /opt/restorer/.venv
    local own
    own=$(/opt/restorer/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    echo /opt/restorer >"$own/00-restorer.pth"
    echo "import site; site.addsitedir('$site')" >"$own/10-host-venv.pth"
    mkdir -p /opt/restorer/.venv/share
    ln -s "$venv/share/neural-image-restore" /opt/restorer/.venv/share/neural-image-restore
    # What pip writes for the console script (the __main__ guard matters: workers are spawned).
    cat >/opt/restorer/.venv/bin/restorer <<'SCRIPT'
#!/opt/restorer/.venv/bin/python
import sys
from app.cli import main
if __name__ == "__main__":
    sys.exit(main())
SCRIPT
    chmod 0755 /opt/restorer/.venv/bin/restorer
    /opt/restorer/.venv/bin/restorer --help >/dev/null || fail "the venv's restorer does not run"

    # 5. systemd/README.md, steps 1-4.
    getent group photos >/dev/null || groupadd --system photos
    getent group restorer >/dev/null || groupadd --system restorer
    getent passwd restorer >/dev/null || useradd --system --gid restorer --groups photos \
        --home-dir /var/lib/restorer --shell /usr/sbin/nologin restorer
    mkdir -p /srv/photos/{inbox,outbox,failed,archive}
    chgrp -R photos /srv/photos && chmod -R g+rwX /srv/photos
    find /srv/photos -type d -exec chmod g+s {} +
    mkdir -p /etc/restorer
    sed -e 's/^model = .*/model = "realesr-animevideov3"/' -e 's/^faces = true/faces = false/' \
        -e 's/^stability_seconds = .*/stability_seconds = 1.0/' \
        /opt/restorer/config/restorer.example.toml >/etc/restorer/restorer.toml
    chown root:restorer /etc/restorer/restorer.toml && chmod 0640 /etc/restorer/restorer.toml
    local token
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    install -m 0600 -o root -g root /dev/stdin /etc/restorer/api_token <<<"$token"
    cp /opt/restorer/systemd/restorer.service /etc/systemd/system/
    local verify
    verify=$(systemd-analyze verify /etc/systemd/system/restorer.service 2>&1) || true
    [[ -z $verify ]] || fail "systemd-analyze verify printed: $verify"
    systemctl daemon-reload

    # 6. Start: returns once the daemon sent READY=1 (models loaded, ports bound).
    local t0 started
    t0=$(date +%s)
    log "systemctl start restorer"
    systemctl start restorer || fail "systemctl start restorer failed"
    started=$(seconds_since "$t0")
    [[ $(systemctl is-active restorer) == active ]] || fail "restorer is not active after start"
    log "active (READY=1) after ${started}s"
    [[ $(api GET /api/v1/health) == 200 ]] || fail "GET /api/v1/health on loopback did not answer 200"
    # The token came from LoadCredential=: a loopback POST without it is refused, with it accepted.
    [[ $(api POST /api/v1/jobs/999999/retry) == 401 ]] || fail "a POST without the token was not refused"
    [[ $(api POST /api/v1/jobs/999999/retry "$token") == 404 ]] || fail "a POST with the token was refused"
    log "API answers on loopback; the api_token credential is in force"

    # 7. One photo through the inbox.
    /opt/restorer/.venv/bin/python -c '
import numpy as np
from PIL import Image
rng = np.random.default_rng(7)
ramp = np.linspace(0, 255, 96, dtype=np.float32)
pixels = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:64, None], (1, 96)), rng.uniform(0, 255, (64, 96))], -1)
Image.fromarray(pixels.astype(np.uint8)).save("/var/tmp/photo.png")
'
    install -m 0664 -g photos /var/tmp/photo.png /srv/photos/inbox/photo.png
    t0=$(date +%s)
    local output=""
    while [[ -z $output && $(seconds_since "$t0") -lt 600 ]]; do
        sleep 1
        output=$(find /srv/photos/outbox -type f ! -name '.*' | head -1)
        [[ $(systemctl is-active restorer) == active ]] || fail "restorer stopped while restoring"
        [[ -z $(find /srv/photos/failed -type f | head -1) ]] || fail "the photo failed: $(cat /srv/photos/failed/*.txt)"
    done
    [[ -n $output ]] || fail "no restored file in the outbox after 600 s"
    log "restored after $(seconds_since "$t0")s: $(stat -c '%n %U:%G %a %s bytes' "$output")"
    /opt/restorer/.venv/bin/python -c 'import sys; from PIL import Image; size = Image.open(sys.argv[1]).size; assert size == (384, 256), size' "$output" \
        || fail "the output is not the 4x image"
    [[ $(systemctl show -p NRestarts --value restorer) == 0 ]] || fail "the service restarted"
    [[ -n $(systemctl show -p WatchdogTimestampMonotonic --value restorer | grep -v '^0$') ]] \
        || fail "no WATCHDOG=1 ping reached systemd"
    local bad
    bad=$(journalctl --no-pager -b -u restorer | grep -iE 'SIGSYS|bad system call|operation not permitted|permission denied|read-only file system|traceback|core-dump' || true)
    [[ -z $bad ]] || fail "the journal has errors: $bad"
    # ReadWritePaths: the original crossed from inbox/ to archive/ (two mounts: copied, then deleted), and
    # in the service's own mount namespace only the five folders may be written, not the share's root.
    t0=$(date +%s)
    while [[ ! -f /srv/photos/archive/photo.png && $(seconds_since "$t0") -lt 60 ]]; do sleep 1; done
    [[ -f /srv/photos/archive/photo.png && ! -e /srv/photos/inbox/photo.png ]] \
        || fail "the original did not move from inbox/ to archive/"
    local pid
    pid=$(systemctl show -p MainPID --value restorer)
    local refused
    refused=$(nsenter --target "$pid" --mount -- touch /srv/photos/probe 2>&1) \
        && fail "the share's root is writable inside the service"
    [[ $refused == *"Read-only file system"* ]] || fail "writing the share's root inside the service: $refused"
    nsenter --target "$pid" --mount -- sh -c 'touch /srv/photos/archive/.probe && rm /srv/photos/archive/.probe' \
        || fail "archive/ is not writable inside the service"
    log "inside the service only the four folders and the state folder are writable; the original is in archive/"
    systemd-analyze security --no-pager restorer | tail -1

    # 8. Stop: the daemon stops intake and exits 0 well within TimeoutStopSec.
    t0=$(date +%s)
    systemctl stop restorer
    local stopped result status
    stopped=$(seconds_since "$t0")
    result=$(systemctl show -p Result --value restorer)
    status=$(systemctl show -p ExecMainStatus --value restorer)
    [[ $result == success && $status == 0 ]] || fail "stop: result $result, exit status $status"
    log "stopped cleanly in ${stopped}s"
    log "SUMMARY systemd $(systemctl --version | head -1 | cut -d' ' -f2): active after ${started}s, photo restored, stopped in ${stopped}s"
    finish 0
}

if [[ ${1:-} == --inside ]]; then
    inside_main
else
    host_main
fi
