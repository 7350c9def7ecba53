"""The one settings model: TOML file < RESTORER_* environment < flags, validated with clear messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args, get_origin

import pytest
from pydantic import SecretStr, ValidationError

from app.commands.serve import settings_from_args
from daemon.settings import DEFAULT_PRESETS, Settings

CONFIG = Path(__file__).resolve().parent.parent / "config"

ISSUE_ENV_NAMES = {
    "RESTORER_INBOX": ("inbox", "/data/in", Path("/data/in")),
    "RESTORER_OUTBOX": ("outbox", "/data/out", Path("/data/out")),
    "RESTORER_FAILED_DIR": ("failed_dir", "/data/failed", Path("/data/failed")),
    "RESTORER_ARCHIVE_DIR": ("archive_dir", "/data/archive", Path("/data/archive")),
    "RESTORER_STATE_DIR": ("state_dir", "/var/lib/x", Path("/var/lib/x")),
    "RESTORER_API_PORT": ("api_port", "9001", 9001),
    "RESTORER_SITE_PORT": ("site_port", "9091", 9091),
    "RESTORER_BIND": ("bind", "127.0.0.1", "127.0.0.1"),
    "RESTORER_STABILITY_SECONDS": ("stability_seconds", "12.5", 12.5),
    "RESTORER_WATCH_MODE": ("watch_mode", "polling", "polling"),
    "RESTORER_POLL_SECONDS": ("poll_seconds", "30", 30.0),
    "RESTORER_ORIGINALS": ("originals", "keep", "keep"),
    "RESTORER_MAX_ATTEMPTS": ("max_attempts", "7", 7),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RESTORER_"):
            monkeypatch.delenv(name)


def test_defaults_are_a_lan_service_on_8001_and_8091() -> None:
    settings = Settings.load()
    assert (settings.bind, settings.api_port, settings.site_port) == ("0.0.0.0", 8001, 8091)
    assert settings.watch_mode == "auto" and settings.originals == "archive"


@pytest.mark.parametrize("env_name", sorted(ISSUE_ENV_NAMES))
def test_environment_names_from_the_issue(env_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    field, raw, expected = ISSUE_ENV_NAMES[env_name]
    monkeypatch.setenv(env_name, raw)
    assert getattr(Settings.load(), field) == expected


def test_precedence_toml_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "r.toml"
    config.write_text('max_attempts = 4\npoll_seconds = 9\nwatch_mode = "native"\n')
    assert Settings.load(config).max_attempts == 4
    monkeypatch.setenv("RESTORER_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("RESTORER_POLL_SECONDS", "8")
    settings = Settings.load(config, max_attempts=6)
    assert (settings.max_attempts, settings.poll_seconds, settings.watch_mode) == (6, 8.0, "native")


def test_serve_flags_override_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import build_parser

    config = tmp_path / "r.toml"
    config.write_text('originals = "delete"\napi_port = 1234\n')
    monkeypatch.setenv("RESTORER_API_PORT", "2345")
    args = build_parser().parse_args(["serve", "--config", str(config), "--watch-mode", "polling"])
    settings = settings_from_args(args)
    assert (settings.originals, settings.api_port, settings.watch_mode) == ("delete", 2345, "polling")
    args = build_parser().parse_args(["serve", "--config", str(config), "--api-port", "3456"])
    assert settings_from_args(args).api_port == 3456


def test_example_config_documents_every_key_and_loads() -> None:
    example = CONFIG / "restorer.example.toml"
    text = example.read_text()
    for name in Settings.model_fields:
        if name == "presets":
            assert "[presets." in text
            continue
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE), f"{name} is not documented in {example}"
    settings = Settings.load(example)
    assert settings.presets == DEFAULT_PRESETS


def test_local_config_used_by_make_run_loads() -> None:
    settings = Settings.load(CONFIG / "local.toml")
    assert settings.inbox == Path("var/inbox") and settings.bind == "0.0.0.0"


def test_presets_from_the_config_apply_to_their_subfolder(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text('[presets.bw-scans]\nscale = 2\nfaces = false\noutput_format = "png"\n')
    settings = Settings.load(config)
    options = settings.restore_options("bw-scans")
    assert (options.scale, options.faces, options.output_format) == (2, False, "png")
    with pytest.raises(KeyError, match="unknown preset"):
        settings.restore_options("nope")


def test_colour_mode_is_a_restore_option_a_preset_and_a_restore_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import build_parser
    from app.flags import settings_from_args

    assert Settings.load().restore_options().colour_mode == "auto"
    config = tmp_path / "r.toml"
    config.write_text('[presets.hand-tinted]\ncolour_mode = "colour"\n')
    settings = Settings.load(config)
    assert settings.restore_options("hand-tinted").colour_mode == "colour"
    assert settings.restore_options().colour_mode == "auto"
    monkeypatch.setenv("RESTORER_COLOUR_MODE", "colour")
    assert Settings.load().restore_options().colour_mode == "colour"
    args = build_parser().parse_args(["restore", "x.png", "-o", "out", "--colour-mode", "auto"])
    assert settings_from_args(args).restore_options().colour_mode == "auto"
    with pytest.raises(ValidationError, match="'auto' or 'colour'"):
        Settings.load(colour_mode="gray")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inbox": "/x", "outbox": "/x/out"}, "must be separate folders"),
        ({"output_file_mode": "rw-r--r--"}, "must be octal"),
        ({"watch_mode": "inotify"}, "auto"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"api_port": 70000}, "less than or equal to 65535"),
    ],
)
def test_invalid_settings_fail_with_clear_messages(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings.load(**values)


def test_missing_config_file_is_named() -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.toml"):
        Settings.load("/nowhere.toml")


def test_settings_survive_the_trip_to_the_worker_process() -> None:
    token = "secret-0123456789abcdef"
    settings = Settings.load(
        inbox="/a", outbox="/b", presets={"x": {"scale": 3}}, api_token=token, protect_reads=True
    )
    copy = settings.to_child_json()
    assert token not in copy and "api_token" not in copy
    again = Settings.from_child_json(copy)
    assert again.inbox == Path("/a") and again.presets["x"].scale == 3 and again.api_token is None
    assert again.protect_reads  # the rule that needs the token was checked where the token is


def test_protect_reads_without_a_token_fails_when_the_settings_are_made() -> None:
    with pytest.raises(ValidationError, match="protect_reads needs api_token"):
        Settings.load(protect_reads=True)
    assert Settings.load(protect_reads=True, api_token="t" * 16).protect_reads


def test_every_secret_is_left_out_of_every_dump() -> None:
    """One list of secrets: the fields marked exclude=True. Every SecretStr and *_file secret is one of
    them, so neither the copy sent to workers and Ray actors nor public_dict carries one."""
    fields = Settings.model_fields
    secret_types = {name for name, field in fields.items() if SecretStr in get_args(field.annotation)}
    excluded = {name for name, field in fields.items() if field.exclude}
    assert secret_types | {"api_token_file", "webhook_secret_file"} == excluded
    settings = Settings.load(
        api_token="a" * 20,
        webhook_url="https://hooks.example/x",
        webhook_secret="w" * 20,
        notify_urls=["ntfy://ntfy.example/topic"],
    )
    for dump in (json.loads(settings.to_child_json()), settings.public_dict()):
        assert excluded.isdisjoint(dump)


def test_limits_are_converted_to_pixels_and_bytes_in_one_place() -> None:
    settings = Settings.load(max_input_megapixels=2.5, max_input_mb=3, min_free_mb=4)
    assert (settings.max_input_pixels, settings.max_input_bytes) == (2_500_000, 3 * 1024 * 1024)
    assert settings.min_free_bytes == 4 * 1024 * 1024 and settings.max_output_pixels is None
    assert Settings.load(max_output_megapixels=0.5).max_output_pixels == 500_000


def test_every_setting_has_a_description_for_its_flag_help() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []


def test_flags_are_made_from_settings_fields_with_types_choices_and_help() -> None:
    import argparse

    from app.flags import add_settings_flags, settings_from_args

    # Secrets and lists or tables come from the file or the environment; every other field can be a flag.
    fields = Settings.model_fields
    structured = {name for name, field in fields.items() if get_origin(field.annotation) in (list, dict)}
    parser = argparse.ArgumentParser()
    secrets = {name for name, field in fields.items() if SecretStr in get_args(field.annotation)}
    assert {"api_token", "webhook_url", "webhook_secret"} <= secrets
    add_settings_flags(parser, [name for name in fields if name not in {*secrets, *structured}])
    backend = next(a for a in parser._actions if a.dest == "backend")
    assert backend.choices == ("auto", "openvino", "torch")
    assert backend.help.startswith(Settings.model_fields["backend"].description)
    args = parser.parse_args(
        ["--tile", "64", "--scale", "2.5", "--inbox", "/in", "--no-faces", "--strip-gps"]
    )
    assert (args.tile, args.scale, args.inbox, args.faces, args.strip_gps) == (
        64,
        2.5,
        Path("/in"),
        False,
        True,
    )
    assert args.model is None and args.config is None  # not given: the file or environment decides
    settings = settings_from_args(args)
    assert (settings.tile, settings.faces, settings.model) == (64, False, "RealESRGAN_x4plus")
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "cuda"])


def test_restore_keeps_its_older_flag_spellings() -> None:
    from app.cli import build_parser
    from app.flags import settings_from_args

    args = build_parser().parse_args(
        ["restore", "x.png", "-o", "out", "--no-face", "--format", "png", "--denoise", "0.5", "--tile", "32"]
    )
    settings = settings_from_args(args)
    assert (settings.faces, settings.output_format, settings.denoise_strength, settings.tile) == (
        False,
        "png",
        0.5,
        32,
    )
