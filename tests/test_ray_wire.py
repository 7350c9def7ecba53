"""What crosses the wire between the daemon and a Ray actor (daemon/ray_executor.py): bytes only.

Every actor method returns bytes, which Ray hands over raw (no pickle); the daemon checks the JSON header
and the sizes before the Worker sees anything, and rebuilds the processor's errors from text. No Ray
cluster here: the actor class runs in this process, and Ray's own rule for bytes is checked in a child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.job_loop import JobCancelled, Processed
from daemon.messages import EngineAccount
from daemon.ray_executor import (
    MAX_HEADER_BYTES,
    ActorFailedError,
    ActorProgress,
    ActorReady,
    ActorReplyError,
    RestoreActor,
    decode_reply,
    encode_processed,
    encode_reply,
    max_output_bytes,
)
from daemon.settings import Settings
from pipeline import BadImageError, RestoreError, RestoreOptions
from pipeline.types import CorruptImageError, WeightsMissingError
from tests.daemon_processors import CopyProcessor, fake_photo
from tests.support.settings import folders

OK = {"ok": True, "format": "png", "extension": ".png", "report": {"seconds": 1.5, "faces": []}}


def test_a_reply_round_trips_output_format_extension_and_report() -> None:
    reply = decode_reply(encode_reply(OK, b"\x89PNG output"), max_output_bytes=100)
    assert reply == Processed(b"\x89PNG output", "png", ".png", {"seconds": 1.5, "faces": []})
    tiff = Processed(b"II*\x00 output", "tiff", ".tif", {"seconds": 2.0})
    assert decode_reply(encode_processed(tiff), max_output_bytes=100) == tiff


def _blob(header: Any, data: bytes = b"out") -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "big") + head + data


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        ({"ok": True}, "not bytes"),  # what an unpickled object would be
        ("text", "not bytes"),
        (b"\x00\x00", "no valid header"),
        ((MAX_HEADER_BYTES + 1).to_bytes(4, "big") + b"{}", "no valid header"),
        ((50).to_bytes(4, "big") + b"{}", "no valid header"),  # the header runs past the end
        ((5).to_bytes(4, "big") + b"{nope", "not JSON"),
        (_blob([1, 2]), "not an object"),
        (_blob({"format": "png"}), "neither ok nor failed"),
        (_blob({**OK, "format": "../../etc"}), "format"),
        (_blob({**OK, "format": "PNG"}), "format"),
        (_blob({**OK, "extension": "png"}), "extension"),
        (_blob({**OK, "extension": ".png/../x"}), "extension"),
        (_blob({**OK, "report": ["a"]}), "report"),
        (_blob(OK, b""), "output has 0 bytes"),
        (_blob(OK, b"x" * 101), "output has 101 bytes"),
        (_blob({"ok": False, "error": "boom"}), "no error object"),
        (_blob({"ok": False, "error": {"kind": "exec", "type": "X", "message": "m"}}), "kind/type/message"),
        (_blob({"ok": False, "error": {"kind": "error", "type": 3, "message": "m"}}), "kind/type/message"),
    ],
)
def test_anything_but_the_protocol_is_refused_with_a_reason(blob: Any, why: str) -> None:
    with pytest.raises(ActorReplyError, match=why.replace("(", r"\(").replace(".", r"\.")):
        decode_reply(blob, max_output_bytes=100)


def _failure(kind: str, name: str, message: str = "what went wrong") -> Exception:
    blob = _blob({"ok": False, "error": {"kind": kind, "type": name, "message": message}})
    with pytest.raises(Exception) as caught:
        decode_reply(blob, max_output_bytes=100)
    return caught.value


def test_the_processors_errors_come_back_as_the_pipelines_own_classes_by_name_only() -> None:
    corrupt = _failure("bad-input", "CorruptImageError", "the image data stops after 3 bytes")
    assert type(corrupt) is CorruptImageError and str(corrupt) == "the image data stops after 3 bytes"
    assert type(_failure("bad-input", "os.system")) is BadImageError  # an unknown name: the base class
    assert type(_failure("restore", "WeightsMissingError")) is WeightsMissingError
    # A bad-input class named under "restore" stays a RestoreError: the kind decides what happens.
    assert type(_failure("restore", "CorruptImageError")) is RestoreError
    assert type(_failure("cancelled", "JobCancelled")) is JobCancelled
    other = _failure("error", "ZeroDivisionError", "division by zero")
    assert type(other) is ActorFailedError and str(other) == "ZeroDivisionError: division by zero"
    assert len(str(_failure("error", "E", "m" * 100_000))) < 5000  # messages are cut


def test_progress_and_the_engine_account_are_checked_for_types() -> None:
    progress = ActorProgress.decode(b'{"count": 3, "stage": "upscale", "done": 2, "total": 9}')
    assert progress == ActorProgress(3, "upscale", 2, 9) == ActorProgress.decode(progress.encode())
    for bad in (
        b'{"count": true, "stage": null, "done": 0, "total": 0}',
        b'{"count": -1, "stage": null, "done": 0, "total": 0}',
        b'{"count": 1, "stage": ["x"], "done": 0, "total": 0}',
        b"[1, null, 0, 0]",
    ):
        with pytest.raises(ActorReplyError):
            ActorProgress.decode(bad)
    engine = EngineAccount("copy", "cpu", None, "test", ({"id": "x4plus", "official": True, "path": None},))
    ready = ActorReady("box", 7, engine)
    assert ActorReady.decode(ready.encode()) == ready
    account = engine.to_json()
    for bad, why in (
        ({"host": "box"}, "exactly host, pid and engine"),
        ({"host": "box", "pid": 1, "engine": account, "extra": 1}, "exactly host, pid and engine"),
        ({"host": "box", "pid": "7", "engine": account}, "host name and pid"),
        ({"host": "box", "pid": True, "engine": account}, "host name and pid"),
        ({"host": "b", "pid": 1, "engine": [account]}, "exactly its fields"),
        ({"host": "b", "pid": 1, "engine": {**account, "device": [1]}}, "device is not short text"),
        ({"host": "b", "pid": 1, "engine": {**account, "reason": "x" * 5000}}, "reason is not short text"),
        ({"host": "b", "pid": 1, "engine": {**account, "extra": "x"}}, "exactly its fields"),
        ({"host": "b", "pid": 1, "engine": {**account, "models": [{"id": {"a": 1}}]}}, "flat objects"),
        ({"host": "b", "pid": 1, "engine": {**account, "models": [{}] * 1000}}, "short list"),
    ):
        with pytest.raises(ActorReplyError, match=why):
            ActorReady.decode(json.dumps(bad).encode())
    with pytest.raises(ActorReplyError, match="could not load its processor: WeightsMissingError"):
        ActorReady.decode(b'{"error": "WeightsMissingError: no x4plus"}')


def test_the_output_limit_is_the_largest_image_the_options_allow(tmp_path: Path) -> None:
    settings = Settings(**folders(tmp_path), max_input_megapixels=10)
    assert max_output_bytes(settings, RestoreOptions(scale=2)) == 10e6 * 4 * 8 + (64 << 20)
    capped = RestoreOptions(scale=4, max_output_megapixels=1)
    assert max_output_bytes(settings, capped) == 1e6 * 8 + (64 << 20)


class _NoWeights(CopyProcessor):
    def __init__(self, settings: Settings) -> None:
        raise WeightsMissingError("no weights for x4plus in weights/")


def test_every_actor_method_returns_bytes_and_failures_travel_as_text(tmp_path: Path) -> None:
    settings_json = Settings(**folders(tmp_path)).to_child_json()
    actor = RestoreActor(settings_json, CopyProcessor)
    options_json = RestoreOptions().model_dump_json()
    ready, done, failed = (
        actor.ready(),
        actor.process(fake_photo(b"a photo"), options_json),
        actor.process(fake_photo(b"BAD bytes"), options_json),
    )
    progress, cancel = actor.progress(), actor.cancel()
    assert all(type(value) is bytes for value in (ready, done, failed, progress, cancel))
    assert ActorReady.decode(ready).engine == EngineAccount("copy", "cpu", "none", "test processor")
    assert decode_reply(done, max_output_bytes=1000).data == fake_photo(b"a photo")
    with pytest.raises(CorruptImageError, match="stops after 3 bytes"):
        decode_reply(failed, max_output_bytes=1000)
    broken = RestoreActor(settings_json, _NoWeights)  # its constructor does not raise either
    with pytest.raises(ActorReplyError, match="WeightsMissingError: no weights for x4plus"):
        ActorReady.decode(broken.ready())


def test_ray_hands_bytes_over_raw_without_pickle() -> None:
    """The rule the protocol relies on, checked against the installed Ray (in a child: pytest does not
    load Ray): bytes are stored as RAW and read back with to_pybytes(), never through pickle."""
    probe = (
        "from ray._private.serialization import SerializationContext as S\n"
        "print(type(S.serialize(object.__new__(S), b'photo')).__name__)\n"
        "print(type(S.serialize(object.__new__(S), {'a': 1})).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["RawSerializedObject", "MessagePackSerializedObject"]
