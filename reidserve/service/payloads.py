"""Reading request bodies (JSON or ``multipart/form-data``) and writing JSON answers, shared by the routers.

Each endpoint that takes images reads its body itself (not through FastAPI's parameter parsing) because it
accepts two content types; the JSON body is validated by the same pydantic model that documents it, and its
errors are reported like FastAPI's own (422, ``detail`` a list of ``loc``/``msg``/``type``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from .fastpath import media_type
from .preprocess import decode_base64

__all__ = ["ERROR_RESPONSES", "b64_all", "check_form_fields", "form", "form_number", "form_text", "json_body",
           "json_object", "media", "reply", "request_body", "unsupported", "uploaded_files", "validation_errors"]

# the error answers of the endpoints that read a body (OpenAPI "responses")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request: a multipart body that cannot be parsed (no boundary, broken parts), "
                         "or more than one Authorization header"},
    401: {"description": "missing or invalid token"}, 413: {"description": "request or image too large"},
    415: {"description": "unsupported content type"}, 422: {"description": "invalid input"}}


def media(request: Request) -> str:
    """The request's media type (``Content-Type`` without parameters, lower case; '' when missing)."""
    return media_type(request.headers.get("content-type"))


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors of a body as FastAPI reports them."""
    return [{"loc": ["body", *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)]


async def json_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body validated by ``model`` (a 422 ``RequestValidationError`` otherwise)."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(validation_errors(exc)) from None


async def form(request: Request, max_files: int, max_part: int) -> FormData:
    """The request's multipart form (at most ``max_files`` files, parts of at most ``max_part`` bytes)."""
    return await request.form(max_files=max_files, max_fields=64, max_part_size=max_part)


async def uploaded_files(data: FormData, names: tuple[str, ...]) -> list[bytes]:
    """The bytes of the file parts named ``names`` (422 when one of them is a text field)."""
    out: list[bytes] = []
    for name in names:
        for value in data.getlist(name):
            if not isinstance(value, UploadFile):
                raise HTTPException(422, f"form field {name!r} must be a file upload (multipart file part with a "
                                         "filename), not text")
            out.append(await value.read())
    return out


def check_form_fields(data: FormData, model: type[BaseModel], also: tuple[str, ...] = ()) -> None:
    """422 for a form field that ``model`` (an ``*Upload`` model) does not name (nor ``also``): an unknown field is
    refused, never ignored."""
    allowed = set(model.model_fields) | set(also)
    unknown = sorted({name for name in data.keys() if name not in allowed})
    if unknown:
        hint = " (send an embedding as JSON, not in a multipart form)" if "embedding" in unknown else ""
        raise HTTPException(422, f"form field {unknown[0]!r} is not accepted here{hint}; the fields are "
                                 f"{', '.join(sorted(allowed))}")


def form_number(data: FormData, name: str) -> float | None:
    """A form field holding a number (None when missing; 422 when it is not a number)."""
    text = form_text(data, name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise HTTPException(422, f"form field {name!r} must be a number, got {text[:40]!r}") from None


def form_text(data: FormData, name: str) -> str | None:
    """The text field ``name`` (None when missing; 422 when it is a file)."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPException(422, f"form field {name!r} must be text, not a file")
    return value


def json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """A form field holding a JSON object (None when missing or blank; 422 otherwise)."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise HTTPException(422, f"form field {what!r} must be a JSON object") from None
    if not isinstance(value, dict):
        raise HTTPException(422, f"form field {what!r} must be a JSON object")
    return value


def unsupported(media_type_: str) -> HTTPException:
    """The 415 answer to a content type the endpoint does not read."""
    return HTTPException(415, f"content type {media_type_ or '(none)'!r} is not accepted: send application/json "
                              "(images base64-encoded) or multipart/form-data (image files)")


def b64_all(values: list[str], what: str) -> list[bytes]:
    """Decode base64 images; ``what`` names them in error messages (``what[i]``)."""
    return [decode_base64(v, f"{what}[{i}]") for i, v in enumerate(values)]


def request_body(*models: tuple[str, type[BaseModel]]) -> dict[str, Any]:
    """``openapi_extra`` documenting a request body by content type (the models' schemas are added to the
    document's components by the app)."""
    return {"requestBody": {"required": True, "content": {
        m_type: {"schema": {"$ref": f"#/components/schemas/{m.__name__}"}} for m_type, m in models}}}


def reply(model: BaseModel, status: int = 200) -> Response:
    """A JSON answer, serialised by pydantic directly (no ``jsonable_encoder`` pass)."""
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")
