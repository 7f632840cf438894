"""Request bodies and query strings into models, or into 400/422 envelopes."""

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import REQUEST_BODY_MAX_BYTES

Model = TypeVar("Model", bound=BaseModel)


def validation_error(exc: ValidationError, where: str) -> TaskenvError:
    errors = [{"loc": [where, *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or where for e in errors)
    return TaskenvError(ErrorType.VALIDATION, f"Invalid request {where}: {fields}", errors=errors)


async def _read_capped(request: Request) -> bytes:
    too_large = TaskenvError(ErrorType.PAYLOAD_TOO_LARGE, f"Request body over {REQUEST_BODY_MAX_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > REQUEST_BODY_MAX_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > REQUEST_BODY_MAX_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[Model]) -> Model:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise TaskenvError(
            ErrorType.INVALID_REQUEST, f"Unsupported content type {content_type!r}: send application/json"
        )
    raw = await _read_capped(request)
    try:
        data: Any = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskenvError(ErrorType.INVALID_REQUEST, f"Malformed JSON body: {exc}") from None
    except RecursionError:
        raise TaskenvError(ErrorType.INVALID_REQUEST, "Malformed JSON body: nested too deeply") from None
    except ValueError:  # an integer of more than 4,300 digits
        raise TaskenvError(ErrorType.INVALID_REQUEST, "Malformed JSON body: a number is too long") from None
    if not isinstance(data, dict):
        raise TaskenvError(ErrorType.INVALID_REQUEST, "The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, "body") from None


def parse_query(request: Request, model: type[Model], *, lists: tuple[str, ...] = ()) -> Model:
    params = request.query_params
    data: dict[str, Any] = {key: params.get(key) for key in params if key not in lists}
    data.update({key: params.getlist(key) for key in lists if key in params})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, "query") from None
