"""Request and response models of the HTTP API (pydantic), also the source of the OpenAPI document.

JSON requests carry images as base64 strings; the same endpoints take ``multipart/form-data`` uploads, described
by the ``*Upload`` models (files in ``images`` / ``image``, other fields as form fields, ``metadata`` and
``filter`` as JSON text; fields they do not name are refused). Static bounds here are hard ceilings; the server's
configured limits (``--max-images``, ``--max-k``, ...) are checked on top and reported in ``GET /v1/limits``
(and ``/v1/stats``).

JSON bodies are validated strictly: a number is not accepted as a string nor the reverse, ``true`` is not ``1``,
``"5"`` is not ``5``. The rule "exactly one of image / images / embedding" is in the JSON Schema too (``oneOf``).
Item ids are 1-128 characters of ``A-Z a-z 0-9 _ . : -``, except ``.`` and ``..``, which a URL path cannot carry
(HTTP clients resolve them as "this folder" and "the parent folder").
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .store import check_metadata

__all__ = [
    "DeleteResponse",
    "EmbedRequest",
    "EmbedResponse",
    "EmbedUpload",
    "ExistsRequest",
    "ExistsResponse",
    "GalleryAddRequest",
    "GalleryAddResponse",
    "GalleryItemIn",
    "GalleryItemOut",
    "GalleryUpload",
    "HealthResponse",
    "HitOut",
    "LimitsResponse",
    "ReadyResponse",
    "SearchFilterIn",
    "SearchRequest",
    "SearchResponse",
    "SearchUpload",
    "WriteOut",
]

HARD_MAX_IMAGES = 1024
HARD_MAX_ITEMS = 4096
HARD_MAX_K = 10_000
HARD_MAX_DIM = 65_536

# 1-128 of [A-Za-z0-9_.:-], but not "." nor "..": starting with a non-dot, or with one dot and a non-dot, or with
# two dots and anything more (the regex engine has no lookahead)
ID_PATTERN = (r"^(?:[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,127}|\.[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,126}"
              r"|\.\.[A-Za-z0-9_.:-]{1,126})$")
ItemId = Annotated[str, Field(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : - (not . or ..)",
                              examples=["person-0042"])]
CameraId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="1-64 of A-Z a-z 0-9 _ . : -",
                                examples=["cam3"])]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Base64Image = Annotated[str, Field(min_length=1, description="image file bytes (JPEG, PNG, WebP, BMP, GIF, PPM), "
                                   "base64 (standard or URL-safe; a data: URL prefix is accepted)")]
Embedding = Annotated[list[FiniteFloat], Field(min_length=1, max_length=HARD_MAX_DIM,
                                               description="the model's output size; normalised by the service")]
MetaValue = str | int | float | bool | None


class _Strict(BaseModel):
    """A JSON request body: no unknown fields, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Upload(BaseModel):
    """A multipart request body (documentation of its fields; read by hand): no unknown fields."""

    model_config = ConfigDict(extra="forbid")


def _exactly_one(*fields_and_types: tuple[str, str]) -> dict[str, Any]:
    """JSON Schema of "exactly one of these fields is given (not null)"."""
    return {"oneOf": [{"required": [name], "properties": {name: {"type": kind}}} for name, kind in fields_and_types]}


def _check_meta(value: dict[str, Any] | None) -> dict[str, Any]:
    return check_metadata(value)  # GalleryError is a ValueError: pydantic reports it as a validation error


class EmbedRequest(_Strict):
    images: list[Base64Image] = Field(min_length=1, max_length=HARD_MAX_IMAGES)


class EmbedUpload(_Upload):
    images: list[bytes] = Field(min_length=1, description="image files", json_schema_extra={
        "items": {"type": "string", "format": "binary"}})


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="one L2-normalised embedding per image, in request order")
    dim: int
    count: int


class GalleryItemIn(_Strict):
    """One gallery item: its id and exactly one of ``image``, ``images`` (embeddings averaged, e.g. a tracklet)
    or ``embedding``."""

    model_config = ConfigDict(json_schema_extra=_exactly_one(("image", "string"), ("images", "array"),
                                                             ("embedding", "array")))

    id: ItemId
    image: Base64Image | None = None
    images: list[Base64Image] | None = Field(default=None, min_length=1, max_length=HARD_MAX_IMAGES)
    embedding: Embedding | None = None
    camera: CameraId | None = None
    time: FiniteFloat | None = Field(default=None, description="seconds since the epoch")
    metadata: dict[str, MetaValue] = Field(default_factory=dict, max_length=32)

    _meta = field_validator("metadata")(_check_meta)

    @model_validator(mode="after")
    def _one_source(self) -> GalleryItemIn:
        given = [n for n in ("image", "images", "embedding") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image, images or embedding (got {', '.join(given) or 'none'})")
        return self


class GalleryAddRequest(_Strict):
    items: list[GalleryItemIn] = Field(min_length=1, max_length=HARD_MAX_ITEMS)


class GalleryUpload(_Upload):
    id: ItemId
    images: list[bytes] = Field(min_length=1, description="one or more image files of the item",
                                json_schema_extra={"items": {"type": "string", "format": "binary"}})
    camera: CameraId | None = None
    time: FiniteFloat | None = None
    metadata: str | None = Field(default=None, description="a JSON object of metadata")


class WriteOut(BaseModel):
    id: str
    created: bool = Field(description="false when an existing id was replaced")
    seq: int | None = Field(description="the store's sequence number of the write")


class GalleryAddResponse(BaseModel):
    items: list[WriteOut]
    gallery_size: int


class GalleryItemOut(BaseModel):
    id: str
    camera: str | None
    time: float | None
    metadata: dict[str, Any]
    seq: int | None
    embedding: list[float] | None = None


class DeleteResponse(BaseModel):
    id: str
    deleted: bool
    seq: int | None
    gallery_size: int


class SearchFilterIn(_Strict):
    cameras: list[CameraId] | None = Field(default=None, max_length=256, description="only these cameras")
    exclude_cameras: list[CameraId] = Field(default_factory=list, max_length=256)
    time_min: FiniteFloat | None = None
    time_max: FiniteFloat | None = None
    exclude_ids: list[ItemId] = Field(default_factory=list, max_length=1024)


class SearchRequest(_Strict):
    """A query: exactly one of ``image`` or ``embedding``."""

    model_config = ConfigDict(json_schema_extra=_exactly_one(("image", "string"), ("embedding", "array")))

    image: Base64Image | None = None
    embedding: Embedding | None = None
    k: int = Field(default=10, ge=1, le=HARD_MAX_K)
    filter: SearchFilterIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SearchRequest:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give exactly one of image or embedding")
        return self


class SearchUpload(_Upload):
    image: bytes = Field(description="the query image file", json_schema_extra={"format": "binary"})
    k: int = Field(default=10, ge=1, le=HARD_MAX_K)
    filter: str | None = Field(default=None, description="a JSON SearchFilterIn object")


class HitOut(BaseModel):
    id: str
    score: float = Field(description="inner product of L2-normalised embeddings (cosine similarity)")
    camera: str | None
    time: float | None
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    k: int
    gallery_size: int
    took_ms: float


class LimitsResponse(BaseModel):
    """What this server accepts in one request (its ``--max-*`` options); clients split their work to fit."""

    max_k: int = Field(description="results per search (--max-k)")
    max_images: int = Field(description="images per request, over all its items (--max-images)")
    max_items: int = Field(description="gallery items per POST /v1/gallery, ids per POST /v1/gallery/exists "
                                       "(--max-items)")
    max_body_bytes: int = Field(description="largest request body in bytes (--max-body-mb)")
    max_pixels: int = Field(description="width x height of one image (--max-pixels)")
    max_batch: int = Field(description="images per model run (--max-batch, or less where the model is limited); a "
                                       "bulk upload of this many images per request keeps the model busy")


class ExistsRequest(_Strict):
    ids: list[ItemId] = Field(min_length=1, max_length=HARD_MAX_ITEMS)


class ExistsResponse(BaseModel):
    present: list[str] = Field(description="the asked-for ids that are in the gallery, in request order")
    missing: list[str] = Field(description="the others, in request order")


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str] = Field(default_factory=list)
