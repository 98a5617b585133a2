"""Request and response models of the HTTP API (pydantic), also the source of the OpenAPI document.

JSON requests carry images as base64 strings; the same endpoints take ``multipart/form-data`` uploads, described
by the ``*Upload`` models (files in ``images`` / ``image``, other fields as form fields, ``metadata`` and
``filter`` as JSON text). Static bounds here are hard ceilings; the server's configured limits (``--max-images``,
``--max-k``, ...) are checked on top and reported in ``GET /v1/stats``.
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
    "GalleryAddRequest",
    "GalleryAddResponse",
    "GalleryItemIn",
    "GalleryItemOut",
    "GalleryUpload",
    "HealthResponse",
    "HitOut",
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

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
ItemId = Annotated[str, Field(pattern=ID_PATTERN, description="1-128 of A-Z a-z 0-9 _ . : -",
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
    model_config = ConfigDict(extra="forbid")


def _check_meta(value: dict[str, Any] | None) -> dict[str, Any]:
    return check_metadata(value)  # GalleryError is a ValueError: pydantic reports it as a validation error


class EmbedRequest(_Strict):
    images: list[Base64Image] = Field(min_length=1, max_length=HARD_MAX_IMAGES)


class EmbedUpload(BaseModel):
    images: list[bytes] = Field(min_length=1, description="image files", json_schema_extra={
        "items": {"type": "string", "format": "binary"}})


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="one L2-normalised embedding per image, in request order")
    dim: int
    count: int


class GalleryItemIn(_Strict):
    """One gallery item: its id and exactly one of ``image``, ``images`` (embeddings averaged, e.g. a tracklet)
    or ``embedding``."""

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


class GalleryUpload(BaseModel):
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

    image: Base64Image | None = None
    embedding: Embedding | None = None
    k: int = Field(default=10, ge=1, le=HARD_MAX_K)
    filter: SearchFilterIn | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SearchRequest:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give exactly one of image or embedding")
        return self


class SearchUpload(BaseModel):
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


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str] = Field(default_factory=list)
