"""Logging: one structured access line per request, JSON by default or readable text.

Loggers: ``gateway`` (the gateway's own messages) and ``gateway.access`` (one line per
request). Nothing logged carries request or upstream headers, so configured secrets never
reach a log.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

ACCESS = logging.getLogger("gateway.access")
LogFormat = Literal["json", "text"]


@dataclass
class AccessRecord:
    """What the access line says about one request; filled in as the request goes."""

    request_id: str
    client: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    endpoint: str | None = None
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends_header: str = ""
    timings: list[tuple[str, str, float]] = field(default_factory=list)  # name, outcome, s
    # the endpoint's auth: {"policy": NAME} once passed, {"refused": CODE, "reason": WORD}
    # when refused; never a token, a key or a claim
    auth: dict[str, str] | None = None
    # a WebSocket relay's end: {"ended_by", "close_code", "from_client", "from_upstream"}
    websocket: dict[str, Any] | None = None

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "endpoint": self.endpoint,
            "status": self.status,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
        }
        if self.auth is not None:
            out["auth"] = self.auth
        if self.websocket is not None:
            out["websocket"] = self.websocket
        if self.backends:
            out["backends"] = self.backends
        elif self.backends_header:
            out["backends"] = {
                name: {"outcome": outcome}
                for name, _, outcome in (p.partition("=") for p in self.backends_header.split(", "))
            }
        return out


def log_access(record: AccessRecord) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("request", extra={"access": record.fields()})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access:
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        if not access:
            return f"{stamp} {record.levelname.lower()} {record.name}: " + super().format(record)
        backends = " ".join(
            f"{name}={b['outcome']}"
            + (f"/{b['duration_ms']}ms" if "duration_ms" in b else "")
            + (f" ({b['reason']})" if "reason" in b else "")
            for name, b in access.get("backends", {}).items()
        )
        return (
            f"{stamp} {access['status']} {access['method']} {access['path']} "
            f"{access['duration_ms']}ms id={access['request_id']} client={access['client']}"
            + (f" backends: {backends}" if backends else "")
        )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    """Send the gateway's logs to stderr in ``fmt``; idempotent."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger("gateway")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
