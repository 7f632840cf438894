"""Logging for every process: one JSON object per line (python-json-logger), carrying the id of
the request being served. The API takes that id from `X-Request-Id` (or makes one), sends it
back in the response, and passes it with each job, so the worker's line about a command names
the request that asked for it."""

import logging
import re
import sys
import uuid
from contextvars import ContextVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str] = ContextVar("taskenv_request_id", default="")
# A client's own id is kept if it is this sane; otherwise the API makes one.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id_from(header: str | None) -> str:
    return header if header and _SANE_ID.match(header) else uuid.uuid4().hex


class _RequestContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


def configure(level: str, fmt: str = "json", **static: str) -> None:
    """Log to stderr at `level`; `static` fields (service, host) go on every JSON line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields=static,
                # uvicorn's copy of each message with terminal colours: noise in a log store.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # arq logs every job with its arguments: commands are the users' business, not our logs'.
    logging.getLogger("arq").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
