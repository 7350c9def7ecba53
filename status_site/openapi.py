"""The API described in OpenAPI 3.1 (served at /api/v1/openapi.json).

Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses; tests validate real responses against them, so
this document cannot drift from what the handlers send.
"""

from __future__ import annotations

from functools import cache
from typing import Any

JOB_STATES = ["queued", "processing", "done", "failed", "cancelled"]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details (application/problem+json).",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": _STR,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "minLength": 1},
            "instance": _STR,
        },
        "additionalProperties": True,
    },
    "Index": {
        "type": "object",
        "required": ["api_version", "openapi", "links"],
        "properties": {
            "api_version": _STR,
            "openapi": _STR,
            "links": {"type": "object", "additionalProperties": _STR},
        },
    },
    "Health": {
        "type": "object",
        "description": "The daemon's view of itself. Extra fields may appear; these are the stable ones.",
        "required": ["status", "reasons"],
        "properties": {
            "status": {"enum": ["ok", "degraded", "down"]},
            "reasons": {"type": "array", "items": _STR},
            "ready": _BOOL,
            "watch_mode": _nullable(_STR),
            "watcher_alive": _BOOL,
            "inbox_reachable": _BOOL,
            "outbox_writable": _BOOL,
            "outbox_free_bytes": _nullable(_INT),
            "worker_alive": _BOOL,
            "worker_state": _STR,
            "executor": {"enum": ["local", "ray"]},
            "workers": {
                "type": "array",
                "description": "one entry per worker slot (a local process, or a Ray actor)",
                "items": {
                    "type": "object",
                    "required": ["id", "device", "state", "job_id"],
                    "properties": {
                        "id": _STR,
                        "device": _STR,
                        "state": _STR,
                        "job_id": _nullable(_INT),
                        "pid": _nullable(_INT),
                        "heartbeat_age_s": _nullable(_NUM),
                    },
                },
            },
            "cluster": _nullable(
                {
                    "type": "object",
                    "description": "executor ray: state (connected|unreachable), address, nodes, actors",
                    "additionalProperties": True,
                }
            ),
            "backend": _nullable(_STR),
            "device": _nullable(_STR),
            "precision": _nullable(_STR),
            "models": {"type": "array", "items": {"type": "object"}},
            "notifications": {
                "type": "object",
                "description": "targets configured, pending notifications, targets whose last try failed "
                "(scheme#hash, never the URL) and the last error",
                "properties": {
                    "targets": _INT,
                    "pending": _INT,
                    "failing_targets": {"type": "array", "items": _STR},
                    "last_error": _nullable(_STR),
                },
            },
            "intake_paused": _BOOL,
            "intake_paused_reason": _nullable(_STR),
            **{
                "queue_paused": {"type": "boolean", "description": "paused by someone (pause/resume)"},
                "queue_pause_mode": _nullable({"enum": ["after-current", "now"]}),
                "queue_paused_by": _nullable(_STR),
                "queue_paused_at": _nullable(_TIME),
                "queue_run_hours": {"type": "array", "items": _STR},
                "queue_next_run_at": _nullable(
                    {"type": "string", "description": "quiet hours: when the next window opens (local)"}
                ),
                "queue_waiting_reason": _nullable(
                    {"type": "string", "description": "why no new job starts now (pause, quiet hours)"}
                ),
            },
        },
        "additionalProperties": True,
    },
    "QueueState": {
        "type": "object",
        "description": "The queue's pause and quiet hours (the same fields as in Health).",
        "required": ["queue_paused", "queue_paused_by", "queue_paused_at", "queue_next_run_at"],
        "properties": {
            "queue_paused": _BOOL,
            "queue_pause_mode": _nullable({"enum": ["after-current", "now"]}),
            "queue_paused_by": _nullable(_STR),
            "queue_paused_at": _nullable(_TIME),
            "queue_run_hours": {"type": "array", "items": _STR},
            "queue_next_run_at": _nullable(_STR),
            "queue_waiting_reason": _nullable(_STR),
        },
    },
    "Capabilities": {
        "type": "object",
        "required": [
            "api_version",
            "can_write",
            "token_required",
            "write_hint",
            "upload_max_bytes",
            "upload_max_files",
            "presets",
            "previews",
            "reads_require_token",
            "signed_in",
        ],
        "properties": {
            "api_version": _STR,
            "reads_require_token": {"type": "boolean", "description": "protect_reads: reads need the token"},
            "signed_in": {"type": "boolean", "description": "this request carried the valid API token"},
            "can_write": {"type": "boolean", "description": "POST endpoints accept this client"},
            "token_required": _BOOL,
            "write_hint": _nullable({"type": "string", "description": "one line for the page"}),
            "upload_max_bytes": _INT,
            "upload_max_files": _INT,
            "presets": {"type": "array", "items": _STR},
            "models": {
                "type": "array",
                "items": {"type": "object"},
                "description": "every model (built-in and the user's files: id, arch, scale, purpose, state, "
                "size_bytes, sha256, license; state refused with its reason), the weights folder scanned "
                "now; selectable: an upload's `model` field may name it (weights here, upscale or restore)",
            },
            "model": {
                "oneOf": [_STR, {"type": "array", "items": _STR, "minItems": 2}],
                "description": "the configured model id, or a chain's ids in the order they run",
            },
            "previews": {
                "type": "object",
                "description": "the ?max= edges the page asks for: thumbnails, the inspector, its 1:1 view",
                "required": ["thumbnail", "inspector", "largest"],
                "properties": {"thumbnail": _INT, "inspector": _INT, "largest": _INT},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "FileRef": {
        "type": "object",
        "required": ["path", "size_bytes", "url"],
        "properties": {
            "path": {"type": "string", "description": "relative to its folder (inbox or outbox), posix"},
            "size_bytes": _nullable(_INT),
            "original": {"enum": ["inbox", "archived", "deleted", "failed_dir"]},
            "url": _STR,
        },
    },
    "Face": {
        "type": "object",
        "required": ["box", "score", "restored"],
        "properties": {
            "box": {
                "type": "array",
                "items": _NUM,
                "minItems": 4,
                "maxItems": 4,
                "description": "x0, y0, x1, y1 in output pixels",
            },
            "score": _NUM,
            "landmarks": {"type": "array", "items": {"type": "array", "items": _NUM}},
            "restored": _BOOL,
            "reason": _nullable(_STR),
        },
    },
    "Report": {
        "type": "object",
        "description": "The pipeline's RestoreReport.to_dict().",
        "properties": {
            "input_size": _nullable({"type": "array", "items": _INT}),
            "output_size": _nullable({"type": "array", "items": _INT}),
            "input_mode": _nullable(_STR),
            "output_mode": _nullable(_STR),
            "model": _nullable(_STR),
            "scale": _nullable(_NUM),
            "steps": {
                "type": "array",
                "description": "each model of the chain, in the order they ran",
                "items": {
                    "type": "object",
                    "properties": {"model": _STR, "scale": _INT, "tiles": _INT, "seconds": _NUM},
                    "additionalProperties": True,
                },
            },
            "backend": _nullable(_STR),
            "device": _nullable(_STR),
            "precision": _nullable(_STR),
            "seconds": _NUM,
            "stage_seconds": {"type": "object", "additionalProperties": _NUM},
            "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
            "colour": _nullable({"$ref": "#/components/schemas/Colour"}),
            "notes": {"type": "array", "items": _STR},
        },
        "additionalProperties": True,
    },
    "Colour": {
        "type": "object",
        "description": "The colour path the photo took and the numbers that chose it (8-bit YCbCr chroma).",
        "required": ["path", "reason"],
        "properties": {
            "path": {"enum": ["colour", "gray", "toned"]},
            "reason": _STR,
            "chroma_p99": _nullable(_NUM),
            "chroma_p999": _nullable(_NUM),
            "tone_residual_p95": _nullable(_NUM),
            "hue_degrees": _nullable(_NUM),
            "hue_spread_degrees": _nullable(_NUM),
        },
        "additionalProperties": True,
    },
    "Job": {
        "type": "object",
        "required": [
            "id",
            "name",
            "state",
            "stage",
            "progress",
            "queue_position",
            "eta_seconds",
            "attempts",
            "detected_at",
            "started_at",
            "finished_at",
            "input",
            "output",
            "faces",
            "error",
            "report",
            "links",
        ],
        "properties": {
            "id": _INT,
            "name": {"type": "string", "description": "the input's file name"},
            "state": {"enum": JOB_STATES},
            "stage": _nullable(_STR),
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "queue_position": _nullable(
                {"type": "integer", "minimum": 0, "description": "0 running, 1 next, null not waiting"}
            ),
            "eta_seconds": _nullable(
                {"type": "number", "minimum": 0, "description": "seconds until done; null when not estimable"}
            ),
            "worker": _nullable(
                {
                    "type": "string",
                    "description": "the worker slot running it (health.workers); null when not running",
                }
            ),
            "attempts": _INT,
            "priority": _INT,
            "preset": _nullable(_STR),
            "detected_at": _nullable(_TIME),
            "started_at": _nullable(_TIME),
            "finished_at": _nullable(_TIME),
            "heartbeat_at": _nullable(_TIME),
            "seconds": _nullable(_NUM),
            "input": {"$ref": "#/components/schemas/FileRef"},
            "output": _nullable({"$ref": "#/components/schemas/FileRef"}),
            "faces": {"type": "array", "items": {"$ref": "#/components/schemas/Face"}},
            "error": _nullable({"type": "string", "description": "why it failed, in words"}),
            "failure_kind": _nullable(_STR),
            "note": _nullable(_STR),
            "cleaned_at": _nullable(
                {**_TIME, "description": "when retention (archive_days / failed_days) removed the original"}
            ),
            "cancel_requested": _BOOL,
            "options": {"type": "object"},
            "report": _nullable({"$ref": "#/components/schemas/Report"}),
            "links": {"type": "object", "additionalProperties": _STR},
            "changed": {"type": "boolean", "description": "retry/cancel/prioritize only: whether it changed"},
            "file": {"type": "string", "description": "upload only: the file name as sent"},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "next": _nullable({"type": "string", "description": "pass as cursor= for the next page"}),
        },
        "additionalProperties": False,
    },
    "Accepted": {
        "type": "object",
        "required": ["jobs", "location"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}, "minItems": 1},
            "location": _STR,
        },
        "additionalProperties": False,
    },
    "Stats": {
        "type": "object",
        "required": [
            "generated_at",
            "counts",
            "total",
            "per_hour",
            "per_day",
            "seconds_per_megapixel",
            "done_total",
        ],
        "properties": {
            "generated_at": _TIME,
            "counts": {
                "type": "object",
                "required": JOB_STATES,
                "properties": {state: _INT for state in JOB_STATES},
                "additionalProperties": False,
            },
            "total": _INT,
            "per_hour": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["hour", "images", "megapixels", "busy_seconds"],
                    "properties": {"hour": _TIME, "images": _INT, "megapixels": _NUM, "busy_seconds": _NUM},
                },
            },
            "per_day": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["day", "done", "failed", "megapixels", "output_bytes"],
                    "properties": {
                        "day": {"type": "string", "format": "date"},
                        "done": _INT,
                        "failed": _INT,
                        "megapixels": _NUM,
                        "output_bytes": _INT,
                    },
                },
            },
            "seconds_per_megapixel": _nullable(_NUM),
            "done_total": {
                "type": "object",
                "required": ["images", "megapixels", "busy_seconds"],
                "properties": {"images": _INT, "megapixels": _NUM, "busy_seconds": _NUM},
            },
        },
    },
}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_IMAGE = {
    "description": "the image (or a JPEG/PNG preview with ?max=)",
    "content": {"image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}}},
}
_WRITE_ERRORS = {
    "401": _problem("an API token is configured and was not sent or is wrong"),
    "403": _problem(
        "no API token is configured and the client is not on the loopback interface, or a browser sent "
        "the request from another site (Origin / Sec-Fetch-Site)"
    ),
}


def _file_operation(which: str) -> dict[str, Any]:
    return {
        "summary": f"The job's {which} file, looked up from the job record only",
        "operationId": f"get_job_{which}",
        "parameters": [
            _JOB_ID,
            {
                "name": "max",
                "in": "query",
                "required": False,
                "description": "preview: scale to fit max x max pixels (JPEG, or PNG with transparency)",
                "schema": {"type": "integer", "minimum": 16, "maximum": 8192},
            },
        ],
        "responses": {
            "200": _IMAGE,
            "304": {"description": "not modified (If-None-Match matched the ETag)"},
            "400": _problem("bad max value"),
            "422": _problem("not an image, or more pixels than a preview may decode"),
            "403": _problem("the stored path resolves outside its folder (symlink or traversal)"),
            "404": _problem("no such job, or its file is not available"),
        },
    }


# -- notifications (issue 19 item 1) -----------------------------------------------------------------


def _notification_paths() -> dict[str, Any]:
    queued = {
        "type": "object",
        "required": ["queued"],
        "properties": {"queued": _INT, "detail": _STR},
    }
    return {
        "/api/v1/notifications/test": {
            "post": {
                "summary": "Queue a test notification to every configured target (a write)",
                "operationId": "test_notification",
                "security": [{}, {"bearer": []}, {"token": []}],
                "responses": {
                    "202": {
                        "description": "queued; `queued` says for how many targets",
                        "content": {"application/json": {"schema": queued}},
                    },
                    "409": {
                        "description": "no notification target is configured",
                        "content": {"application/json": {"schema": queued}},
                    },
                    **_WRITE_ERRORS,
                },
            }
        }
    }


def _action(name: str, summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": f"{name}_job",
        "parameters": [_JOB_ID],
        "security": [{}, {"bearer": []}, {"token": []}],
        "responses": {
            "200": _json(
                "#/components/schemas/Job", "the job after the action; `changed` says whether it did anything"
            ),
            **_WRITE_ERRORS,
            "404": _problem("no such job"),
        },
    }


# -- queue control (issue 19 item 2) ------------------------------------------------------------------


def _pause_operation() -> dict[str, Any]:
    return {
        "summary": "Pause the queue: no new job starts; it survives a restart (idempotent)",
        "operationId": "pause_queue",
        "security": [{}, {"bearer": []}, {"token": []}],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "when": {
                                "enum": ["after-current", "now"],
                                "default": "after-current",
                                "description": "now: running jobs go back to the queue, first in line",
                            }
                        },
                    }
                }
            },
        },
        "responses": {
            "200": _json("#/components/schemas/QueueState", "the queue now"),
            "400": _problem("a body that is not JSON, or an unknown `when`"),
            **_WRITE_ERRORS,
        },
    }


def _prioritize_operation() -> dict[str, Any]:
    operation = _action("prioritize", "Move a queued job to the front of the queue (idempotent)")
    operation["responses"]["409"] = _problem("the job is not queued")
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    document = _document()
    document["paths"].update(_notification_paths())
    # The guards answer every operation: a foreign Host (DNS rebinding) and, under protect_reads, reads
    # without the token.
    unauthorised = _problem("protect_reads is on and no valid token was sent")
    unknown_host = _problem("the Host header names no host of this server")
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault("401", unauthorised)
            operation["responses"].setdefault("421", unknown_host)
    return document


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Neural Image Restore API",
            "version": "1",
            "description": (
                "Watch-folder photo restoration daemon. Reads are open on the LAN unless protect_reads is "
                "on (then they need the token too). POST endpoints need "
                "the API token when RESTORER_API_TOKEN is set, otherwise they accept loopback clients "
                "only. Errors are application/problem+json (RFC 9457). The status page server mounts "
                "the same /api/v1 routes, so both ports answer them."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "X-API-Token"},
            },
        },
        "paths": {
            "/api/v1": {
                "get": {
                    "summary": "Links to everything",
                    "operationId": "index",
                    "responses": {"200": _json("#/components/schemas/Index", "links")},
                }
            },
            "/api/v1/health": {
                "get": {
                    "summary": "ok | degraded | down, with reasons in words",
                    "operationId": "get_health",
                    "responses": {
                        "200": _json("#/components/schemas/Health", "ok or degraded"),
                        "503": _json("#/components/schemas/Health", "down"),
                    },
                }
            },
            "/api/v1/capabilities": {
                "get": {
                    "summary": "What this client may do (uploads and retries allowed?), upload limits",
                    "operationId": "get_capabilities",
                    "responses": {"200": _json("#/components/schemas/Capabilities", "capabilities")},
                }
            },
            "/api/v1/jobs": {
                "get": {
                    "summary": "A page of jobs, newest first, oldest first or in queue order",
                    "operationId": "list_jobs",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "required": False,
                            "description": "one or more states, comma-separated",
                            "schema": {"type": "string", "examples": ["queued,processing"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "required": False,
                            "description": "the previous page's `next`",
                            "schema": _STR,
                        },
                        {
                            "name": "order",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["newest", "oldest", "queue"], "default": "newest"},
                        },
                        {
                            "name": "ids",
                            "in": "query",
                            "required": False,
                            "description": "comma-separated job ids (up to 100); no cursor or order",
                            "schema": _STR,
                        },
                    ],
                    "responses": {
                        "200": _json("#/components/schemas/JobList", "jobs"),
                        "400": _problem("bad state, limit, order or cursor"),
                    },
                },
                "post": {
                    "summary": "Upload images; each becomes a job",
                    "operationId": "create_jobs",
                    "security": [{}, {"bearer": []}, {"token": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "file": {
                                            "type": "array",
                                            "items": {"type": "string", "contentMediaType": "image/*"},
                                        },
                                        "preset": {"type": "string", "description": "a configured preset"},
                                        "model": {
                                            "type": "array",
                                            "items": {"type": "string", "minLength": 1, "maxLength": 255},
                                            "maxItems": 8,
                                            "description": "optional: a model id capabilities lists as "
                                            "selectable, instead of the preset's (or default) model for "
                                            "these files; several `model` fields run in order (a chain)",
                                        },
                                    },
                                    "required": ["file"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            **_json("#/components/schemas/Accepted", "saved in the inbox and queued"),
                            "headers": {
                                "Location": {"schema": _STR, "description": "the job, or ?ids= for several"}
                            },
                        },
                        "400": _problem(
                            "no files, an unknown field or preset, or a model that is not selectable here"
                        ),
                        **_WRITE_ERRORS,
                        "408": _problem(
                            "the body did not arrive within upload_deadline_seconds, or nothing came for 60 s"
                        ),
                        "413": _problem("too many files or a file too large (checked while streaming)"),
                        "409": _problem(
                            "the preset's inbox folder is a link planted in the share (never written through)"
                        ),
                        "415": _problem("not multipart/form-data"),
                        "422": _problem("a file is not a usable image; nothing was saved"),
                        "507": _problem(
                            "the inbox filesystem is full, or the state disk would drop below min_free_mb"
                        ),
                    },
                },
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "summary": "One job with queue position, ETA and the pipeline report",
                    "operationId": "get_job",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json("#/components/schemas/Job", "the job"),
                        "404": _problem("no such job"),
                    },
                }
            },
            "/api/v1/jobs/{job_id}/retry": {
                "post": _action("retry", "Queue a failed, cancelled or done job again (idempotent)")
            },
            "/api/v1/jobs/{job_id}/cancel": {
                "post": _action(
                    "cancel", "Cancel a queued job, or ask the worker to stop a running one (idempotent)"
                )
            },
            "/api/v1/jobs/{job_id}/prioritize": {"post": _prioritize_operation()},
            "/api/v1/queue/pause": {"post": _pause_operation()},
            "/api/v1/queue/resume": {
                "post": {
                    "summary": "Resume the queue: queued jobs start again (idempotent)",
                    "operationId": "resume_queue",
                    "security": [{}, {"bearer": []}, {"token": []}],
                    "responses": {
                        "200": _json("#/components/schemas/QueueState", "the queue now"),
                        **_WRITE_ERRORS,
                    },
                }
            },
            "/api/v1/jobs/{job_id}/input": {"get": _file_operation("input")},
            "/api/v1/jobs/{job_id}/output": {"get": _file_operation("output")},
            "/api/v1/stats": {
                "get": {
                    "summary": "Counts by state, images and megapixels per hour, per-day totals, s/MP",
                    "operationId": "get_stats",
                    "responses": {"200": _json("#/components/schemas/Stats", "statistics")},
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "get_openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format (API port only)",
                    "operationId": "get_metrics",
                    "responses": {
                        "200": {"description": "metrics", "content": {"text/plain": {"schema": _STR}}}
                    },
                }
            },
        },
    }
