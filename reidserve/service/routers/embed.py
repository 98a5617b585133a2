"""``POST /v1/embed``: images (base64 JSON or multipart files) -> L2-normalised embeddings."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from ..dependencies import Access, State
from ..fastpath import JSON_TYPES
from ..payloads import (
    ERROR_RESPONSES,
    b64_all,
    check_form_fields,
    form,
    json_body,
    media,
    reply,
    request_body,
    unsupported,
    uploaded_files,
)
from ..schemas import EmbedRequest, EmbedResponse, EmbedUpload

__all__ = ["embed", "router"]


# endpoints carry no docstring: FastAPI would publish it as the operation's description
async def embed(request: Request, state: State) -> Response:
    limits = state.settings
    kind = media(request)
    if kind in JSON_TYPES:
        req: EmbedRequest = await json_body(request, EmbedRequest)
        if len(req.images) > limits.max_images:
            raise HTTPException(413, f"{len(req.images)} images in one request; at most {limits.max_images}")
        blobs = b64_all(req.images, "images")
    elif kind == "multipart/form-data":
        data = await form(request, limits.max_images, limits.max_body_bytes)
        blobs = await uploaded_files(data, ("images", "image"))
        if not blobs:
            raise HTTPException(422, "no image files: send them as multipart file parts named 'images'")
        check_form_fields(data, EmbedUpload, also=("image",))
    else:
        raise unsupported(kind)
    emb = await state.embed_images(blobs, [f"images[{i}]" for i in range(len(blobs))])
    return reply(EmbedResponse(embeddings=emb.tolist(), dim=int(emb.shape[1]), count=len(emb)))


def router(access: Access) -> APIRouter:
    r = APIRouter(tags=["embed"])
    r.add_api_route("/v1/embed", embed, methods=["POST"], response_model=EmbedResponse, dependencies=access.read,
                    responses=ERROR_RESPONSES, summary="Embed one or many images",
                    openapi_extra=request_body(("application/json", EmbedRequest),
                                               ("multipart/form-data", EmbedUpload)))
    return r
