"""JSON logs on stdout, and the contract's direct stderr lines (`LIFESPAN:`, `READYZ FAIL`, `[500]`).

Nothing here logs secrets: callers pass messages without tokens, keys or passwords.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": dt.datetime.now(dt.timezone.utc).isoformat(), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        extra = getattr(record, "fields", None)
        if extra:
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging() -> logging.Logger:
    """JSON on stdout for our logger and uvicorn's (server + access log: no headers, so no tokens)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._cullis = True
    for name in ("cullis", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if getattr(h, "_cullis", False)] or [handler]
        lg.propagate = False
    log = logging.getLogger("cullis")
    log.setLevel(logging.INFO)
    return log


log = setup_logging()


def event(msg: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, msg, extra={"fields": fields})


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
