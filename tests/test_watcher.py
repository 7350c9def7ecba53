"""Intake edge cases (shared/notes/watch-folder.md, "Detection"), with real folders, real watchdog
observers in both modes and a real SQLite store. No worker: jobs stay queued, so counts are exact."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver

from daemon.health import HealthState
from daemon.intake import Intake
from daemon.names import is_junk
from daemon.store import JobStore
from daemon.watcher import default_observer
from pipeline import BadImageError, load_image
from tests.daemon_processors import fake_photo
from tests.image_cases import encoded, gif_frames, pattern
from tests.support.settings import make_settings
from tests.support.waiting import wait_for


class Harness:
    def __init__(self, root: Path, mode: str, **overrides: object) -> None:
        self.settings = make_settings(root, watch_mode=mode, **overrides)
        self.inbox = Path(self.settings.inbox)
        self.store = JobStore(self.settings.db_path)
        self.health = HealthState()
        self.health.update(ready=True, worker_alive=True)
        self.intake: Intake | None = None

    def start(self, **kwargs: object) -> Intake:
        self.intake = Intake(self.settings, self.store, self.health, **kwargs)
        self.intake.start()
        return self.intake

    def paths(self) -> list[str]:
        return sorted(j.input_path for j in self.store.list(limit=1000).jobs)

    def settle(self, seconds: float = 1.2) -> None:
        time.sleep(seconds)  # several stability windows: anything that would be queued is by now

    def stop(self) -> None:
        if self.intake is not None:
            self.intake.stop()
        self.store.close()


@pytest.fixture(params=["native", "polling"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, request.param)
    yield h
    h.stop()


def test_file_present_at_start_is_queued_once_by_startup_scan_and_rescan(harness: Harness) -> None:
    (harness.inbox / "old.jpg").write_bytes(fake_photo(b"old photo"))
    intake = harness.start()
    wait_for(lambda: harness.paths() == ["old.jpg"])
    intake.request_rescan()
    wait_for(lambda: intake.scans >= 2)
    harness.settle()
    assert harness.paths() == ["old.jpg"]


def test_slow_chunked_write_gives_one_job_after_the_file_is_stable(harness: Harness) -> None:
    harness.start()
    target = harness.inbox / "scan.jpg"
    with open(target, "wb") as handle:
        handle.write(fake_photo(b""))
        for _ in range(20):  # 100 bytes every 50 ms: 1 s of writing, longer than stability_seconds
            handle.write(b"x" * 100)
            handle.flush()
            time.sleep(0.05)
            assert harness.paths() == []
    job = wait_for(lambda: harness.store.get(1))
    assert job.size_bytes == len(fake_photo(b"")) + 2000 and harness.paths() == ["scan.jpg"]


def test_rename_inside_inbox_part_to_jpg_gives_one_job_under_final_name(harness: Harness) -> None:
    harness.start()
    (harness.inbox / "x.jpg.part").write_bytes(b"downloading")
    harness.settle(0.6)
    os.rename(harness.inbox / "x.jpg.part", harness.inbox / "x.jpg")
    wait_for(lambda: harness.paths() == ["x.jpg"])
    harness.settle()
    assert harness.paths() == ["x.jpg"]


def test_move_in_from_outside_gives_one_job(harness: Harness, tmp_path: Path) -> None:
    harness.start()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "moved.jpg").write_bytes(fake_photo(b"moved in"))
    (outside / "album").mkdir()
    (outside / "album" / "inner.jpg").write_bytes(fake_photo(b"moved folder"))
    os.rename(outside / "moved.jpg", harness.inbox / "moved.jpg")
    os.rename(outside / "album", harness.inbox / "album")
    wait_for(lambda: harness.paths() == ["album/inner.jpg", "moved.jpg"])
    harness.settle()
    assert harness.paths() == ["album/inner.jpg", "moved.jpg"]


def test_file_deleted_before_it_is_stable_creates_no_job(harness: Harness) -> None:
    harness.start()
    (harness.inbox / "gone.jpg").write_bytes(fake_photo(b"short-lived"))
    time.sleep(0.1)
    (harness.inbox / "gone.jpg").unlink()
    harness.settle()
    assert harness.paths() == []


def test_touching_a_queued_file_does_not_queue_it_again(harness: Harness) -> None:
    harness.start()
    photo = harness.inbox / "a.jpg"
    photo.write_bytes(fake_photo(b"photo"))
    wait_for(lambda: harness.paths() == ["a.jpg"])
    os.utime(photo, (time.time() + 5, time.time() + 5))
    harness.settle()
    assert harness.paths() == ["a.jpg"]


def test_same_name_with_new_content_is_processed_again(harness: Harness) -> None:
    harness.start()
    photo = harness.inbox / "a.jpg"
    photo.write_bytes(fake_photo(b"first version"))
    wait_for(lambda: harness.paths() == ["a.jpg"])
    photo.write_bytes(fake_photo(b"second version, longer"))
    wait_for(lambda: harness.paths() == ["a.jpg", "a.jpg"])
    assert {j.state for j in harness.store.list().jobs} == {"queued"}


def test_same_content_under_new_name_is_recognised(harness: Harness) -> None:
    harness.start()
    (harness.inbox / "a.jpg").write_bytes(fake_photo(b"same bytes"))
    wait_for(lambda: harness.paths() == ["a.jpg"])
    (harness.inbox / "copy of a.jpg").write_bytes(fake_photo(b"same bytes"))
    job = wait_for(lambda: harness.store.get(2))
    assert job.state == "cancelled" and job.note.startswith("skipped: same content as job 1")


def test_the_same_photo_dropped_into_a_preset_folder_is_a_new_job(harness: Harness) -> None:
    harness.start()
    (harness.inbox / "a.jpg").write_bytes(fake_photo(b"one photo"))
    wait_for(lambda: harness.paths() == ["a.jpg"])
    (harness.inbox / "2x").mkdir()
    (harness.inbox / "2x" / "a.jpg").write_bytes(fake_photo(b"one photo"))  # "and now at 2x, please"
    (harness.inbox / "copy.jpg").write_bytes(fake_photo(b"one photo"))  # the same request again: a duplicate
    wait_for(lambda: len(harness.paths()) == 3)
    jobs = {j.input_path: j for j in harness.store.list().jobs}
    assert jobs["2x/a.jpg"].state == "queued" and jobs["2x/a.jpg"].options["scale"] == 2
    assert jobs["copy.jpg"].state == "cancelled" and "same content as job 1" in jobs["copy.jpg"].note


def test_skipped_duplicate_is_archived_by_intake_itself(harness: Harness) -> None:
    # enqueue_file applies the originals rule to a skipped copy: no service hook is needed for it.
    harness.start()
    (harness.inbox / "a.jpg").write_bytes(fake_photo(b"same bytes"))
    wait_for(lambda: harness.paths() == ["a.jpg"])
    (harness.inbox / "copy.jpg").write_bytes(fake_photo(b"same bytes"))
    skipped = wait_for(lambda: (j := harness.store.get(2)) is not None and j.original == "archived" and j)
    assert skipped.state == "cancelled" and skipped.original_path == "copy.jpg"
    assert sorted(p.name for p in harness.inbox.iterdir()) == ["a.jpg"]
    assert (harness.settings.archive_dir / "copy.jpg").read_bytes() == fake_photo(b"same bytes")


def test_junk_is_ignored_but_photo_jpg_and_stfolder_jpg_are_accepted(harness: Harness) -> None:
    inbox = harness.inbox
    for junk in [".DS_Store", "._photo.jpg", "Thumbs.db", "desktop.ini", "a.part", "b.crdownload", "c.tmp"]:
        (inbox / junk).write_bytes(b"junk")
    for folder in ["@eaDir", ".stfolder", "__MACOSX", ".hidden"]:
        (inbox / folder).mkdir()
        (inbox / folder / "inside.jpg").write_bytes(b"junk")
    harness.start()
    (inbox / "PHOTO.JPG").write_bytes(fake_photo(b"real"))
    (inbox / "stfolder.jpg").write_bytes(fake_photo(b"real too"))
    (inbox / ".later").write_bytes(b"junk")
    wait_for(lambda: harness.paths() == ["PHOTO.JPG", "stfolder.jpg"])
    harness.settle()
    assert harness.paths() == ["PHOTO.JPG", "stfolder.jpg"]


def test_is_junk_rules() -> None:
    assert is_junk("@eaDir/x.jpg") and is_junk("a/.stfolder/x.jpg") and is_junk("__MACOSX/._a.jpg")
    assert is_junk("Thumbs.DB") and is_junk("x.JPG.part") and is_junk("y.TMP")
    assert not is_junk("PHOTO.JPG") and not is_junk("stfolder.jpg") and not is_junk("a b/c.png")


def test_awkward_names_spaces_unicode_case_255_bytes_same_name_in_two_subfolders(harness: Harness) -> None:
    inbox = harness.inbox
    nfc = unicodedata.normalize("NFC", "café.jpg")
    nfd = unicodedata.normalize("NFD", "café.jpg")
    long_name = "é" * 125 + "a.jpg"  # 250 + 5 = 255 bytes
    assert len(long_name.encode()) == 255
    names = ["with spaces .jpg", nfc, nfd, "Case.jpg", "case.jpg", long_name, "a/same.jpg", "b/same.jpg"]
    harness.start()
    for n, name in enumerate(names):
        (inbox / name).parent.mkdir(exist_ok=True)
        (inbox / name).write_bytes(fake_photo(f"content {n}".encode()))
    wait_for(lambda: len(harness.paths()) == len(names))
    harness.settle()
    assert harness.paths() == sorted(names)


def test_subfolder_named_like_a_preset_applies_it(harness: Harness) -> None:
    harness.start()
    (harness.inbox / "2x").mkdir()
    (harness.inbox / "2x" / "small.jpg").write_bytes(fake_photo(b"two"))
    (harness.inbox / "plain.jpg").write_bytes(fake_photo(b"four"))
    wait_for(lambda: len(harness.paths()) == 2)
    jobs = {j.input_path: j for j in harness.store.list().jobs}
    assert jobs["2x/small.jpg"].preset == "2x" and jobs["2x/small.jpg"].options["scale"] == 2
    assert jobs["plain.jpg"].preset is None and jobs["plain.jpg"].options["scale"] == 4


def test_stat_or_permission_error_logs_and_does_not_crash(harness: Harness) -> None:
    harness.start()
    locked = harness.inbox / "locked"
    locked.mkdir()
    (locked / "in.jpg").write_bytes(b"unreadable folder")
    (harness.inbox / "dangling.jpg").symlink_to(harness.inbox / "missing-target.jpg")
    # A subtree that vanishes between listing and stat must not stop the scan either.
    shutil.rmtree(locked)
    (harness.inbox / "fine.jpg").write_bytes(fake_photo(b"ok"))
    assert harness.intake is not None
    harness.intake.request_rescan()
    wait_for(lambda: harness.paths() == ["dangling.jpg", "fine.jpg"])
    assert harness.intake.observer_alive()
    # A link (dangling or not) is never followed: it is a failed job with a reason, and it is removed.
    jobs = {j.input_path: j for j in harness.store.list().jobs}
    assert jobs["fine.jpg"].state == "queued"
    assert jobs["dangling.jpg"].state == "failed" and "symbolic link" in jobs["dangling.jpg"].error
    assert not os.path.lexists(harness.inbox / "dangling.jpg")


def test_restart_does_not_queue_recorded_files_again(tmp_path: Path) -> None:
    first = Harness(tmp_path, "native")
    for n in range(50):
        (first.inbox / f"{n}.jpg").write_bytes(fake_photo(f"photo {n}".encode()))
    first.start()
    wait_for(lambda: len(first.paths()) == 50)
    first.stop()
    second = Harness(tmp_path, "polling")
    second.start()
    assert second.intake is not None
    wait_for(lambda: second.intake.scans >= 1)
    second.settle()
    assert len(second.paths()) == 50
    second.stop()


def test_polling_mode_file_created_while_watcher_restarts_is_caught_by_rescan(tmp_path: Path) -> None:
    h = Harness(tmp_path, "polling")
    intake = h.start()
    assert h.health.get("watch_mode") == "polling"
    observer = intake.observer
    assert observer is not None
    observer.stop()  # the watcher dies (as watchdog's polling observer does after a read error)
    observer.join(5)
    (h.inbox / "during-restart.jpg").write_bytes(fake_photo(b"nobody watching"))
    wait_for(lambda: h.paths() == ["during-restart.jpg"])
    assert h.health.get("watcher_restarts") >= 1 and intake.observer_alive()
    h.stop()


def test_dead_native_watcher_is_detected_reported_and_restarted(tmp_path: Path) -> None:
    h = Harness(tmp_path, "native")
    intake = h.start()
    assert intake.observer is not None
    for emitter in list(intake.observer.emitters):
        emitter.stop()
    wait_for(lambda: h.health.get("watcher_restarts") >= 1)
    assert h.health.snapshot()["status"] == "ok"
    (h.inbox / "after.jpg").write_bytes(fake_photo(b"seen again"))
    wait_for(lambda: h.paths() == ["after.jpg"])
    h.stop()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EMFILE])
def test_inotify_limit_falls_back_to_polling_and_says_so(tmp_path: Path, error: int) -> None:
    def limited(mode: str, inbox: str, poll_seconds: float) -> BaseObserver:
        if mode == "native":  # what inotify_add_watch / inotify_init return at the kernel's limits
            raise OSError(error, os.strerror(error))
        return default_observer(mode, inbox, poll_seconds)

    h = Harness(tmp_path, "native")
    intake = h.start(observer_factory=limited)
    assert intake.mode == "polling"
    snapshot = h.health.snapshot()
    assert snapshot["watch_mode"] == "polling" and snapshot["status"] == "degraded"
    assert any("inotify" in reason and "polling" in reason for reason in snapshot["reasons"])
    (h.inbox / "still-seen.jpg").write_bytes(fake_photo(b"polled"))
    wait_for(lambda: h.paths() == ["still-seen.jpg"])
    h.stop()


def test_auto_mode_polls_on_a_network_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon import fsinfo

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"41 22 0:51 / {tmp_path / 'inbox'} rw - cifs //nas/photos rw,vers=3.1.1\n"
    )
    monkeypatch.setattr(fsinfo, "MOUNTINFO", mountinfo)
    h = Harness(tmp_path, "auto")
    intake = h.start()
    assert intake.mode == "polling"
    assert "network filesystem (cifs" in h.health.get("watch_mode_reason")
    (h.inbox / "from-another-pc.jpg").write_bytes(fake_photo(b"smb"))
    wait_for(lambda: h.paths() == ["from-another-pc.jpg"])
    h.stop()


def test_inbox_unreachable_then_back_recovers_without_mass_new_jobs(harness: Harness, tmp_path: Path) -> None:
    for n in range(20):
        (harness.inbox / f"{n}.jpg").write_bytes(fake_photo(f"photo {n}".encode()))
    harness.start()
    wait_for(lambda: len(harness.paths()) == 20)
    away = tmp_path / "share-offline"
    os.rename(harness.inbox, away)  # the share disappears (ENOENT, like an unmounted NAS)
    wait_for(lambda: harness.health.snapshot()["status"] == "degraded")
    assert any("inbox is unreachable" in r for r in harness.health.snapshot()["reasons"])
    os.rename(away, harness.inbox)
    wait_for(lambda: harness.health.get("inbox_reachable"))
    (harness.inbox / "new.jpg").write_bytes(fake_photo(b"new after recovery"))
    wait_for(lambda: len(harness.paths()) == 21)
    harness.settle()
    assert len(harness.paths()) == 21 and harness.health.snapshot()["status"] == "ok"


def _mount_tmpfs(path: Path) -> bool:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True
    )
    return result.returncode == 0


def test_inbox_remounted_recovers_without_mass_new_or_deleted_jobs(harness: Harness) -> None:
    if not _mount_tmpfs(harness.inbox):
        pytest.skip("cannot mount tmpfs here (needs root)")
    try:
        for n in range(10):
            (harness.inbox / f"{n}.jpg").write_bytes(fake_photo(f"photo {n}".encode()))
        harness.start()
        wait_for(lambda: len(harness.paths()) == 10)
        stash = {p.name: (p.read_bytes(), p.stat().st_mtime) for p in harness.inbox.iterdir()}
        subprocess.run(["umount", str(harness.inbox)], check=True)
        harness.settle(0.8)
        assert _mount_tmpfs(harness.inbox)  # the share comes back (a new filesystem, same files)
        for name, (data, mtime) in stash.items():
            (harness.inbox / name).write_bytes(data)
            os.utime(harness.inbox / name, (mtime, mtime))
        wait_for(lambda: harness.health.get("watcher_restarts") >= 1)
        (harness.inbox / "new.jpg").write_bytes(fake_photo(b"written after the remount"))
        wait_for(lambda: len(harness.paths()) == 11)
        harness.settle()
        assert len(harness.paths()) == 11
    finally:
        subprocess.run(["umount", "-l", str(harness.inbox)], capture_output=True)


def test_burst_of_1000_files_is_recorded_exactly_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, "native")
    h.start()

    def writer(offset: int) -> None:
        for n in range(offset, 1000, 4):
            folder = h.inbox / f"d{n % 10}"
            folder.mkdir(exist_ok=True)
            (folder / f"{n}.jpg").write_bytes(fake_photo(f"burst {n}".encode()))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: h.store.counts()["queued"] == 1000, timeout=60)
    assert h.intake is not None
    h.intake.request_rescan()
    h.settle()
    paths = h.paths()
    assert len(paths) == 1000 and len(set(paths)) == 1000
    h.stop()


def test_health_reports_degraded_when_the_watcher_cannot_run(tmp_path: Path) -> None:
    def broken(mode: str, inbox: str, poll_seconds: float) -> BaseObserver:
        raise OSError(errno.EACCES, "Permission denied")

    h = Harness(tmp_path, "native")
    h.start(observer_factory=broken)
    snapshot = h.health.snapshot()
    assert snapshot["status"] == "degraded" and not snapshot["watcher_alive"]
    assert any("folder watcher is not running" in r and "Permission denied" in r for r in snapshot["reasons"])
    # The rescan still finds files, so nothing is lost while the watcher is down.
    assert h.intake is not None
    (h.inbox / "found-by-rescan.jpg").write_bytes(fake_photo(b"x"))
    h.intake.request_rescan()
    wait_for(lambda: h.paths() == ["found-by-rescan.jpg"])
    h.stop()


def test_same_file_dropped_again_after_it_was_archived_is_looked_at_again(tmp_path: Path) -> None:
    h = Harness(tmp_path, "native", duplicate_content="process")
    h.start()
    photo = h.inbox / "again.jpg"
    photo.write_bytes(fake_photo(b"the same photo twice"))
    os.utime(photo, (1_000_000, 1_000_000))
    wait_for(lambda: h.paths() == ["again.jpg"])
    job = h.store.get(1)
    h.store.set_original(job.id, "archived", "again.jpg")  # what the worker records after moving it
    (tmp_path / "archive" / "again.jpg").write_bytes(photo.read_bytes())
    photo.unlink()
    time.sleep(0.3)
    photo.write_bytes(fake_photo(b"the same photo twice"))  # e.g. `cp -p` again: same size and mtime
    os.utime(photo, (1_000_000, 1_000_000))
    wait_for(lambda: h.paths() == ["again.jpg", "again.jpg"])
    assert h.store.get(2).note == "same content as job 1 (again.jpg)"
    h.stop()


def test_network_filesystem_detection_reads_mountinfo(tmp_path: Path) -> None:
    from daemon import fsinfo

    for folder in ["photos/inbox", "my share/inbox", "remote/inbox", "photos-local/inbox", "state"]:
        (tmp_path / folder).mkdir(parents=True)
    t = str(tmp_path).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"50 22 0:60 / {t}/photos rw - autofs systemd-1 rw\n"
        f"51 50 0:61 / {t}/photos rw - nfs4 nas:/volume1/photos rw\n"  # automount: the share on top
        f"52 22 0:62 / {t}/my\\040share rw - cifs //nas/my\\040share rw\n"
        f"53 22 0:63 / {t}/remote rw - fuse.sshfs me@host: rw\n"
        f"54 22 0:64 / {t}/photos-local rw - xfs /dev/sdb1 rw\n"
    )
    for folder, fs_type in {
        "photos/inbox": "nfs4",
        "my share/inbox": "cifs",
        "remote/inbox": "fuse.sshfs",
    }.items():
        mount = fsinfo.mount_of(tmp_path / folder, mountinfo)
        assert mount is not None and mount.fs_type == fs_type and mount.is_network, folder
    for folder in ["photos-local/inbox", "state"]:
        assert not fsinfo.is_network_filesystem(tmp_path / folder, mountinfo), folder


def test_unknown_fuse_types_count_as_network_and_known_local_ones_do_not(tmp_path: Path) -> None:
    from daemon import fsinfo

    remote = ["fuse.smbnetfs", "fuse.gvfsd-fuse", "fuse.rclone-mount", "fuse.sshfs-ng", "fuse"]
    local = ["fuse.lxcfs", "fuse.fuse-overlayfs", "fuseblk", "fuse.portal", "ext4", "tmpfs"]
    lines = ["22 1 8:1 / / rw - ext4 /dev/sda1 rw"]
    for n, fs_type in enumerate(remote + local):
        (tmp_path / f"m{n}").mkdir()
        lines.append(f"{60 + n} 22 0:{60 + n} / {tmp_path}/m{n} rw - {fs_type} src{n} rw")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    for n, fs_type in enumerate(remote + local):
        reason = fsinfo.network_reason(tmp_path / f"m{n}", mountinfo)
        if fs_type in remote:
            assert reason is not None and "FUSE filesystem not known to be local" in reason, fs_type
        else:
            assert reason is None, fs_type


def test_auto_mode_polls_an_unknown_fuse_share_and_health_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon import fsinfo

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"41 22 0:51 / {tmp_path / 'inbox'} rw - fuse.smbnetfs smbnetfs rw,user_id=0\n"
    )
    monkeypatch.setattr(fsinfo, "MOUNTINFO", mountinfo)
    h = Harness(tmp_path, "auto")
    intake = h.start()
    assert intake.mode == "polling"
    reason = h.health.get("watch_mode_reason")
    assert "FUSE filesystem not known to be local" in reason and "fuse.smbnetfs" in reason
    h.stop()


def test_events_lost_to_inotify_overflow_or_a_blind_share_are_caught_by_the_periodic_rescan(
    tmp_path: Path,
) -> None:
    from watchdog.observers.polling import PollingObserver

    def blind(mode: str, inbox: str, poll_seconds: float) -> BaseObserver:
        return PollingObserver(timeout=3600)  # alive, but reports nothing (like IN_Q_OVERFLOW drops)

    h = Harness(tmp_path, "native", rescan_seconds=1.0)
    intake = h.start(observer_factory=blind)
    (h.inbox / "missed-by-events.jpg").write_bytes(fake_photo(b"only a rescan finds me"))
    wait_for(lambda: h.paths() == ["missed-by-events.jpg"], timeout=10)
    assert intake.scans >= 2 and intake.observer_alive()
    h.stop()


def test_intake_admits_as_the_pipeline_would_and_records_the_admitted_size(tmp_path: Path) -> None:
    """One admission (daemon/admission.py) for intake: a photo's queued job carries its size from the
    header (what the ETA counts); a pixel bomb whose first bytes are a GIF's is a failed job at intake in
    the pipeline's words, set aside in failed/, and never reaches a worker."""
    h = Harness(tmp_path, "native")
    try:
        h.start()
        (h.inbox / "photo.png").write_bytes(encoded(pattern(30, 40), "PNG"))
        bomb = gif_frames((1, 1), [(65535, 65535)])
        (h.inbox / "bomb.gif").write_bytes(bomb)
        wait_for(lambda: len(h.paths()) == 2)
        jobs = {job.input_path: job for job in h.store.list(limit=10).jobs}
        assert jobs["photo.png"].state == "queued"
        assert jobs["photo.png"].input_megapixels == pytest.approx(40 * 30 / 1e6)
        with pytest.raises(BadImageError) as refused:
            load_image(bomb, max_pixels=h.settings.max_input_pixels)
        assert (jobs["bomb.gif"].state, jobs["bomb.gif"].failure_kind) == ("failed", "bad-input")
        assert jobs["bomb.gif"].error == str(refused.value)
        assert jobs["bomb.gif"].attempts == 0 and jobs["bomb.gif"].input_megapixels is None
        wait_for(lambda: (h.settings.failed_dir / "bomb.gif.error.txt").exists())
    finally:
        h.stop()
