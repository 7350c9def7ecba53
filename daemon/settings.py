"""The one settings model. It feeds the CLI, the daemon, the API and the page.

Precedence, lowest to highest: defaults < TOML file (`--config FILE`) < RESTORER_* environment < flags.
config/restorer.example.toml documents every key.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon import schedule
from pipeline import (
    MIN_TILE,
    Backend,
    Device,
    EngineConfig,
    Precision,
    RestoreOptionFields,
    RestoreOptions,
    models_as_model,
)


def all_optional(fields: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """A model with `fields`' fields, each optional (None: not given) with its own bounds and validators."""
    optional: dict[str, Any] = {
        key: (_or_none(field), Field(None, description=field.description))
        for key, field in fields.model_fields.items()
    }
    validators: dict[str, Any] = {"models_alias": model_validator(mode="before")(models_as_model)}
    return create_model(
        name, __doc__=doc, __config__=ConfigDict(extra="forbid"), __validators__=validators, **optional
    )


def _or_none(field: FieldInfo) -> Any:
    """`field`'s type with its bounds and validators, or None."""
    kind: Any = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return kind | None


_Preset = all_optional(
    RestoreOptionFields,
    "Preset",
    "Partial restore options applied to files dropped in an inbox subfolder of the same name.",
)


class Preset(_Preset):  # type: ignore[misc,valid-type]  # made from RestoreOptionFields, each optional
    def overrides(self) -> dict[str, Any]:
        given: dict[str, Any] = self.model_dump(exclude_none=True)
        return given


DEFAULT_PRESETS: dict[str, Preset] = {
    "no-faces": Preset(faces=False),
    "2x": Preset(scale=2),
    "anime": Preset(model="RealESRGAN_x4plus_anime_6B", faces=False),
    "fast": Preset(model="realesr-animevideov3"),
}


MIN_TOKEN_CHARS = 16

# Notification events (daemon/notify.py sends them); what a target gets unless its URL says otherwise:
# a 500-photo drop is one batch message, not 500.
NOTIFY_EVENTS = ("job.done", "job.failed", "batch.finished", "daemon.degraded", "daemon.recovered")
DEFAULT_NOTIFY_EVENTS = ["batch.finished", "job.failed", "daemon.degraded", "daemon.recovered"]
# RESTORER_NOTIFY_URLS is comma-separated, and a URL's own `?events=a,b` has commas too: split only
# before a comma that starts the next URL (scheme://).
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
CREDENTIAL_TOKEN = "api_token"
MEGAPIXEL = 1_000_000  # pixels
MEGABYTE = 1024 * 1024  # bytes: the *_mb settings are binary megabytes


class TomlFile(TomlConfigSettingsSource):
    """The TOML file, where `models = [...]` is another name for `model` (pipeline/options.py). Renamed
    here, in the file's own keys, so the environment's RESTORER_MODEL still wins over the file's."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        both = "model" in data and "models" in data  # left for Settings' validation to refuse, in words
        return data if both else dict(models_as_model(data))


class CredentialSource(PydanticBaseSettingsSource):
    """systemd's LoadCredential=api_token:FILE: the token is read from $CREDENTIALS_DIRECTORY/api_token,
    so it never sits in the unit, the environment (visible in /proc) or a world-readable TOML file.
    Below the environment and flags, above the TOML file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        path = Path(folder) / CREDENTIAL_TOKEN if folder else None
        if path is None or not path.is_file():
            return {}
        return {"api_token": path.read_text(encoding="utf-8").strip()}


def read_secret_file(path: Path, setting: str) -> str:
    """The secret a `*_file` setting names (a Docker/compose secret under /run/secrets, any file the
    service may read), read once at start and stripped of the newline an editor adds. A missing,
    unreadable or empty file is refused with a message that names the setting and the file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{setting} {path} does not exist (compose: is the secret's file there?)") from None
    except PermissionError:
        raise ValueError(
            f"{setting} {path} cannot be read by uid {os.getuid()} (give that user or group read access)"
        ) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting} {path} is not a text file: {exc}") from None
    except OSError as exc:  # a link loop, an I/O error: say which, never the content
        raise ValueError(f"{setting} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not text:
        raise ValueError(f"{setting} {path} is empty: write the secret into it")
    return text


class TextChainEnv(EnvSettingsSource):
    """RESTORER_MODEL is a model id, or ids separated by commas (a chain): text, not JSON."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name == "model":
            return value
        return super().decode_complex_value(field_name, field, value)


class Settings(BaseSettings, RestoreOptionFields):
    """Every setting. The default restore options (model, scale, faces, ...) are RestoreOptionFields'
    fields, inherited: declared once in pipeline/options.py, overridden per preset."""

    model_config = SettingsConfigDict(env_prefix="RESTORER_", extra="forbid", validate_default=True)

    # Folders. The state dir holds the SQLite DB and caches and must be on local disk.
    inbox: Path = Field(Path("var/inbox"), description="folder watched for new photos (a NAS share works)")
    outbox: Path = Field(Path("var/outbox"), description="folder the restored photos are published to")
    failed_dir: Path = Field(
        Path("var/failed"), description="where inputs that cannot be restored go, with a reason"
    )
    archive_dir: Path = Field(
        Path("var/archive"), description="where originals go after restoring (originals=archive)"
    )
    state_dir: Path = Field(
        Path("var/state"),
        description="local folder for the job database, caches and large outputs' scratch space",
    )
    weights_dir: Path = Field(Path("weights"), description="folder with user-supplied model weight files")

    # Network. A LAN service: binds every interface by default.
    bind: str = Field("0.0.0.0", description="address the status page and the API listen on")
    api_port: int = Field(8001, description="port of the JSON API (0: any free port)", ge=0, le=65535)
    site_port: int = Field(8091, description="port of the status page (0: any free port)", ge=0, le=65535)
    # At least 16 characters. Under systemd it may come from LoadCredential= (the file
    # $CREDENTIALS_DIRECTORY/api_token), see systemd/README.md. Secrets (this, the *_file settings, the
    # notify URLs and the webhook's) are the fields marked exclude=True: that mark is the one list of them,
    # so no dump (the copy sent to workers and Ray actors, public_dict) carries one.
    api_token: SecretStr | None = Field(
        None, exclude=True, description="token for uploads, retry and cancel (without: loopback only)"
    )
    # The token from a file instead (compose's secret /run/secrets/restorer_api_token), so it is never in
    # the environment. Read when the settings are made; left out of dumps, so the settings sent to a
    # worker or a Ray actor on another machine carry neither the token nor a path to look for.
    api_token_file: Path | None = Field(
        None, exclude=True, description="file holding api_token (a container secret); not with api_token"
    )
    protect_reads: bool = Field(
        False, description="every read (page data, thumbnails, files, API) needs api_token too"
    )
    # "*" turns the check off.
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names the servers answer to besides IP literals, localhost and this machine's "
        "own names (anything else gets 421: DNS rebinding protection)",
    )
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the API")
    upload_max_bytes: int = Field(200 * 1024 * 1024, description="largest upload per file, in bytes", gt=0)
    upload_max_files: int = Field(50, description="most files per upload request", gt=0)
    upload_deadline_seconds: float = Field(
        900.0,
        description="an upload whose body has not fully arrived this long after its request began is cut "
        "off (408): a client trickling bytes cannot hold an upload slot for ever",
        gt=0,
    )
    http_idle_seconds: float = Field(
        15.0,
        description="a connection with no complete request header this long after connecting or after its "
        "last answer is closed (idle keep-alive, slow 'slowloris' headers)",
        gt=0,
    )
    # A full port closes the oldest connection that is waiting for its next request instead of refusing
    # the newcomer (status_site/connections.py); the reserve is for 127.0.0.1, ::1 and token holders.
    http_max_connections: int = Field(512, description="open connections per port, in all", ge=1)
    http_max_connections_per_network: int = Field(
        64, description="open connections per port from one IPv4 /24 or IPv6 /64 (reserved ones aside)", ge=1
    )
    http_reserved_connections: int = Field(
        64,
        description="of http_max_connections, slots only 127.0.0.1, ::1 and clients that sent the API token "
        "may use",
        ge=0,
    )

    # Notifications (daemon/notify.py). URLs and the secret hold tokens: excluded from every dump (the
    # settings sent to workers and Ray actors, the API), never logged; public_dict shows them redacted.
    notify_urls: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        exclude=True,
        description="Apprise URLs to notify (ntfy://, gotify://, tgram://, mailto://, discord://, ...); "
        "each may end in ?events=job.failed,batch.finished to choose its events",
    )
    webhook_url: SecretStr | None = Field(
        None, exclude=True, description="URL that gets each event as a signed JSON POST"
    )
    webhook_secret: SecretStr | None = Field(
        None, exclude=True, description="key of the webhook's X-Restorer-Signature (HMAC-SHA256)"
    )
    webhook_secret_file: Path | None = Field(
        None, exclude=True, description="file holding webhook_secret (a container secret)"
    )
    webhook_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_EVENTS), description="events the webhook gets"
    )

    @field_validator("notify_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in _NEXT_URL.split(value) if url.strip()]
        return value

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _split_events(cls, value: Any) -> Any:
        # RESTORER_WEBHOOK_EVENTS=batch.finished,job.failed (a JSON list works in TOML).
        if isinstance(value, str):
            return [event.strip() for event in value.split(",") if event.strip()]
        return value

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(NOTIFY_EVENTS))
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {', '.join(NOTIFY_EVENTS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _one_model_key(cls, data: Any) -> Any:
        """A `models` key left by the TOML file (see TomlFile) is one it gave beside `model`: refused."""
        if isinstance(data, dict) and "models" in data:
            raise ValueError("the config file gives both `model` and `models` (the same option): keep one")
        return data

    @model_validator(mode="before")
    @classmethod
    def _webhook_secret_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("webhook_secret_file") is None:
            return data
        if data.get("webhook_secret") is not None:
            raise ValueError("webhook_secret and webhook_secret_file are both set: keep one")
        secret = read_secret_file(Path(data["webhook_secret_file"]), "webhook_secret_file")
        return {**data, "webhook_secret": secret}

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError(
                "webhook_url needs webhook_secret (or webhook_secret_file): the receiver checks each "
                "body's X-Restorer-Signature with it (make one with `openssl rand -hex 24`)"
            )
        return self

    # Intake.
    watch_mode: Literal["auto", "native", "polling"] = Field(
        "auto", description="how the inbox is watched (auto: polling on network shares)"
    )
    poll_seconds: float = Field(5.0, description="seconds between inbox polls in polling mode", gt=0)
    rescan_seconds: float = Field(
        300.0, description="seconds between full inbox rescans (catches missed events)", gt=0
    )
    stability_seconds: float = Field(
        5.0, description="a file must keep its size and mtime this long to be queued", ge=0
    )
    duplicate_content: Literal["skip", "process"] = Field(
        "skip", description="what to do with a file whose content was restored before"
    )
    min_free_mb: int = Field(
        500, description="intake pauses below this much free space in the outbox (MB)", ge=0
    )

    # Jobs and worker.
    max_attempts: int = Field(3, description="a job that crashed the worker this often is failed", ge=1)
    originals: Literal["archive", "delete", "keep"] = Field(
        "archive", description="what happens to an original once restored"
    )
    archive_days: float | None = Field(
        None,
        description="delete archived originals of restored photos this many days old (unset: keep)",
        gt=0,
    )
    failed_days: float | None = Field(
        None, description="delete files set aside in failed_dir this many days old (unset: keep)", gt=0
    )
    heartbeat_seconds: float = Field(5.0, description="how often the worker reports it is alive", gt=0)
    hang_seconds: float = Field(600.0, description="a worker silent this long is restarted", gt=0)
    stop_grace_seconds: float = Field(
        60.0, description="on SIGTERM, time the current image gets to finish", ge=0
    )
    run_hours: list[str] = Field(
        default_factory=list,
        description='quiet hours: new jobs start only inside these "HH:MM-HH:MM" windows (host time or TZ; '
        '"22:00-07:00" crosses midnight; empty: always)',
    )

    # Executors: where jobs run. "local": `workers` worker processes on this machine ("auto": one per
    # visible CUDA device, else 1). "ray": actors on a Ray cluster (`ray start --address` form, host:port);
    # the daemon still owns the folders and the database and publishes every result itself.
    executor: Literal["local", "ray"] = Field("local", description="where jobs run: local processes or Ray")
    workers: int | Literal["auto"] = Field(
        1, description="local worker processes; auto: one per visible CUDA device, else 1"
    )
    ray_address: str | None = Field(
        None, description="the Ray head, host:port as `ray start --address` takes it"
    )
    ray_actors: int | Literal["auto"] = Field(
        "auto", description="Ray actors; auto: one per GPU in the cluster, else one per node"
    )
    ray_num_cpus: float = Field(1.0, description="CPUs each Ray actor reserves", ge=0)
    ray_num_gpus: float | None = Field(
        None, description="GPUs each Ray actor reserves (unset: 1 when the cluster has GPUs)", ge=0
    )
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources each Ray actor reserves (pins actors to nodes)"
    )
    # The cluster's shared token (Ray's RAY_AUTH_MODE=token): a path, never the token itself, so only the
    # path reaches the driver's environment, the API and health. daemon/ray_token.py reads and checks it.
    ray_token_file: Path | None = Field(
        None,
        description="file holding the Ray cluster's shared token (every Ray machine has the same); "
        "executor = 'ray' needs it",
    )

    @model_validator(mode="after")
    def _ray_needs_a_token(self) -> Settings:
        if self.executor == "ray" and self.ray_token_file is None:
            raise ValueError(
                "executor = 'ray' needs ray_token_file: the file with the Ray cluster's token (make one "
                "with `restorer cluster token FILE` and copy it to every Ray machine)"
            )
        return self

    # Output files.
    output_file_mode: str = Field("0664", description="octal permissions of published outputs")
    output_group: str | None = Field(None, description="group given to published outputs")
    max_input_megapixels: float = Field(
        200.0, description="larger inputs are refused (decompression bombs)", gt=0
    )
    max_input_mb: int = Field(
        1024, description="inbox files larger than this (MB) are refused unread (videos, disk images)", gt=0
    )

    # Engine (one per worker process).
    backend: Backend = Field("auto", description="inference engine (auto: torch on CUDA, else OpenVINO)")
    device: Device = Field("auto", description="where the engine runs")
    precision: Precision = Field(
        "auto", description="number format (auto: bf16/fp16 where the hardware has it)"
    )
    tile: int | None = Field(
        None, description="cap the tile edge in input pixels (default: the engine's choice)", ge=MIN_TILE
    )
    threads: int | None = Field(None, description="CPU threads for the engine (default: all cores)", ge=1)

    # The default restore options (model, scale, faces, ...) are inherited from RestoreOptionFields.
    presets: dict[str, Preset] = Field(
        default_factory=lambda: dict(DEFAULT_PRESETS), description="named partial restore options"
    )

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        # Before field validation, so the file's token gets the same length check as any other.
        if not isinstance(data, dict) or data.get("api_token_file") is None:
            return data
        if data.get("api_token") is not None:
            raise ValueError(
                "api_token and api_token_file are both set (environment, flags, TOML or a systemd "
                "credential): keep the file and remove the other"
            )
        token = read_secret_file(Path(data["api_token_file"]), "api_token_file")
        return {**data, "api_token": token}

    @field_validator("api_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty RESTORER_API_TOKEN= (an unset compose variable) must not make an empty header valid.
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"api_token must be at least {MIN_TOKEN_CHARS} characters, got "
                f"{len(value.get_secret_value())} (an empty RESTORER_API_TOKEN= counts); leave it unset "
                "to accept writes from this machine only, or set a long random one (openssl rand -hex 24)"
            )
        return value

    @model_validator(mode="after")
    def _protected_reads_need_a_token(self) -> Settings:
        if self.protect_reads and self.api_token is None:
            raise ValueError(
                "protect_reads needs api_token: set RESTORER_API_TOKEN (or api_token_file, or a systemd "
                "credential), or turn protect_reads off"
            )
        return self

    @field_validator("run_hours")
    @classmethod
    def _run_windows(cls, value: list[str]) -> list[str]:
        return [str(schedule.parse_window(window)) for window in value]  # ValueError says the form

    def run_windows(self) -> list[schedule.Window]:
        return [schedule.parse_window(window) for window in self.run_hours]

    def next_run(self, now: datetime) -> datetime | None:
        """When quiet hours (run_hours, in TZ or the host's zone) next let a job start; None: now."""
        return schedule.next_run(now, self.run_windows(), schedule.local_zone(os.environ.get("TZ")))

    def run_wait_seconds(self, now: datetime) -> float:
        zone = schedule.local_zone(os.environ.get("TZ"))
        return schedule.seconds_until_run(now, self.run_windows(), zone)

    @field_validator("output_file_mode")
    @classmethod
    def _octal_mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(f"output_file_mode must be octal like '0664', got {value!r}") from None
        if not 0 <= mode <= 0o777:
            raise ValueError(f"output_file_mode {value!r} is outside 0000..0777")
        return value

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers must be 1 or more, or 'auto'")
        return value

    @field_validator("ray_actors")
    @classmethod
    def _positive_actors(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("ray_actors must be 1 or more, or 'auto'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "http_max_connections_per_client" in data:
            raise ValueError(
                "http_max_connections_per_client is now http_max_connections_per_network: connections "
                "are counted per IPv4 /24 and IPv6 /64 (see config/restorer.example.toml)"
            )
        return data

    @model_validator(mode="after")
    def _reserve_below_the_cap(self) -> Settings:
        if self.http_reserved_connections >= self.http_max_connections:
            raise ValueError(
                f"http_reserved_connections ({self.http_reserved_connections}) must be less than "
                f"http_max_connections ({self.http_max_connections}): other clients need slots too"
            )
        return self

    @model_validator(mode="after")
    def _ray_needs_an_address(self) -> Settings:
        if self.executor == "ray" and not self.ray_address:
            raise ValueError(
                "executor = 'ray' needs ray_address: the head's host:port, as `ray start --address` takes it"
            )
        return self

    @model_validator(mode="after")
    def _distinct_folders(self) -> Settings:
        folders = {
            "inbox": self.inbox,
            "outbox": self.outbox,
            "failed_dir": self.failed_dir,
            "archive_dir": self.archive_dir,
        }
        resolved = {name: path.expanduser().resolve() for name, path in folders.items()}
        names = list(resolved)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pa, pb = resolved[a], resolved[b]
                if pa == pb or pa in pb.parents or pb in pa.parents:
                    raise ValueError(f"{a} ({pa}) and {b} ({pb}) must be separate folders, not nested")
        return self

    # Config file support: Settings.load(config_file, **flags).
    _toml_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            TextChainEnv(settings_cls),
            CredentialSource(settings_cls),
        ]
        # Before the first load() the class attribute is pydantic's private-attribute placeholder.
        if isinstance(cls._toml_file, Path):
            sources.append(TomlFile(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **flags: Any) -> Settings:
        """Build settings from an optional TOML file, the environment and explicit flags (None = unset)."""
        if config_file is not None and not Path(config_file).is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        overrides = {key: value for key, value in flags.items() if value is not None}
        cls._toml_file = Path(config_file) if config_file is not None else None
        try:
            return cls(**overrides)
        finally:
            cls._toml_file = None

    def to_child_json(self) -> str:
        """The settings for a worker process or a Ray actor: every field but the secrets."""
        return self.model_dump_json()

    @classmethod
    def from_child_json(cls, text: str) -> Settings:
        """Settings rebuilt from to_child_json, without the secrets. The rule that ties a setting to a
        secret (protect_reads needs api_token) was checked by the daemon, which holds the secret: the
        setting is validated off and put back as it was."""
        data = json.loads(text)
        protect_reads = bool(data.pop("protect_reads", False))
        return cls.model_validate(data).model_copy(update={"protect_reads": protect_reads})

    # Derived views for the other layers: the limits in the units the code compares (written once here).
    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * MEGABYTE

    @property
    def max_input_bytes(self) -> int:
        return self.max_input_mb * MEGABYTE

    @property
    def max_input_pixels(self) -> int:
        return int(self.max_input_megapixels * MEGAPIXEL)

    @property
    def max_output_pixels(self) -> int | None:
        """The configured output cap in pixels (None: no cap beyond what the scale makes)."""
        if self.max_output_megapixels is None:
            return None
        return int(self.max_output_megapixels * MEGAPIXEL)

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def scratch_dir(self) -> Path:
        """Where outputs too big for memory are assembled (unlinked files: nothing to clean up)."""
        return self.state_dir / "scratch"

    @property
    def file_mode(self) -> int:
        return int(self.output_file_mode, 8)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            weights_dir=str(self.weights_dir),
            cache_dir=str(self.cache_dir),
            backend=self.backend,
            device=self.device,
            precision=self.precision,
            tile=self.tile,
            threads=self.threads,
            scratch_dir=str(self.scratch_dir),
        )

    def restore_options(self, preset: str | None = None) -> RestoreOptions:
        base = RestoreOptions.model_validate(self.model_dump(include=set(RestoreOptionFields.model_fields)))
        if preset is None:
            return base
        if preset not in self.presets:
            raise KeyError(f"unknown preset {preset!r}; known: {', '.join(sorted(self.presets))}")
        return base.replace(**self.presets[preset].overrides())

    def public_dict(self) -> dict[str, Any]:
        """What the API and page may show: everything but secrets."""
        data = self.model_dump(mode="json")
        data["api_token_set"] = self.api_token is not None
        data["webhook_set"] = self.webhook_url is not None
        data["notify_targets"] = len(self.notify_urls)
        return data
