"""Structured logs: one line per request and per notable event, as text or JSON.

`event(logger, "name", key=value, ...)` is the only way services log facts. Fields are data, not
prose, so a JSON line can be queried; the text form prints them as key=value. Callers never pass
tokens or message bodies: the request log records the path (never the query string, where a browser
may carry `access_token`) and ids.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "pingpull_fields"
_EVENT = "pingpull_event"


def event(logger: logging.Logger, name: str, /, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_EVENT: name, _FIELDS: fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, _EVENT, None)
        if name is not None:
            out["event"] = name
            out.update(getattr(record, _FIELDS, {}))
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = getattr(record, _EVENT, None)
        if name is not None:
            fields = " ".join(f"{k}={v}" for k, v in getattr(record, _FIELDS, {}).items() if v is not None)
            line = f"{stamp} {record.levelname:<5} {record.name} {name} {fields}".rstrip()
        else:
            line = f"{stamp} {record.levelname:<5} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Hypercorn's own access log would duplicate ours and print query strings.
    logging.getLogger("hypercorn.access").disabled = True
