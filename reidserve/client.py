"""A Python client of ``reidserve serve`` (httpx), also behind ``reidserve query``.

    from reidserve.client import ReidClient

    with ReidClient("http://127.0.0.1:8080", token="...") as c:
        c.add("person-1", image="crop.jpg", camera="cam1", metadata={"track": 7})
        hits = c.search(image="query.jpg", k=5, exclude_cameras=["cam1"])
        print(hits[0]["id"], hits[0]["score"])

Images may be given as a path, raw file bytes, a PIL image or an ``HxW`` / ``HxWxC`` ``uint8`` array (sent as
PNG). Images travel base64-encoded in JSON (``upload="json"``, the default) or as multipart files
(``upload="multipart"``). A non-2xx answer raises :class:`ReidClientError` carrying the status and the server's
``detail`` message; so do a server that cannot be reached and an image or token file that cannot be read
(``status`` 0).

The client asks the server for its limits once (``GET /v1/limits``: results per search, images and items per
request, body size) and checks each request against them before sending it: a request the server would refuse
raises :class:`ReidClientError` (status 0) saying which limit, and :meth:`ReidClient.embed` splits a long list of
images into requests that fit. Against a server without ``/v1/limits`` nothing is checked in advance. Bulk imports
of image folders are :mod:`reidserve.gallery_import`. This module imports neither torch nor the service.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from .errors import ReidserveError

__all__ = ["ReidClient", "ReidClientError", "ServerLimits", "image_bytes", "read_token_file"]

ImageLike = str | os.PathLike[str] | bytes | np.ndarray | Any  # Any: a PIL image


class ReidClientError(ReidserveError):
    """The server refused a request (``status`` >= 400) or could not be reached, or the request could not be made
    (``status`` 0); the message says which and why."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = "") -> None:
        self.status, self.detail = status, detail
        text = detail if isinstance(detail, str) else _format_detail(detail)
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{status} {text}" if status else f"{where}{text}")


def _format_detail(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for e in detail:
            if isinstance(e, dict):
                loc = ".".join(str(x) for x in e.get("loc", []) if x != "body")
                parts.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
            else:
                parts.append(str(e))
        return "; ".join(parts)
    return str(detail)


def image_bytes(image: ImageLike) -> bytes:
    """The file bytes to send for ``image`` (path, bytes, PIL image or uint8 array; arrays become PNG)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        p = Path(image)
        try:
            return p.read_bytes()
        except OSError as exc:
            raise ReidClientError(0, f"cannot read image {p}: {exc.strerror or exc}") from None
    from PIL import Image  # lazy: Pillow only when the client reads image files

    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ReidClientError(0, f"an image array must be uint8 HxW or HxWxC, got {arr.dtype} {arr.shape}")
        image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ReidClientError(0, f"cannot send a {type(image).__name__} as an image (give a path, bytes, a PIL image "
                             "or a uint8 array)")


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The first token of a token file (one per line; blank lines and ``#`` comments are skipped), such as the
    server's ``DATA_DIR/token``."""
    p = Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReidClientError(0, f"--token-file {p}: {reason}") from None
    found = [ln for ln in lines if ln and not ln.startswith("#")]
    if not found:
        raise ReidClientError(0, f"--token-file {p} holds no token")
    return found[0]


def _b64(image: ImageLike) -> str:
    return base64.b64encode(image_bytes(image)).decode("ascii")


def _item_path(item_id: str) -> str:
    """The URL path of a gallery item (the id percent-encoded); ``.`` and ``..`` cannot be sent in a path."""
    if item_id in (".", ".."):
        raise ReidClientError(0, f"item id {item_id!r} cannot be sent in a URL path (the server refuses such ids)")
    return "/v1/gallery/" + quote(item_id, safe="")


@dataclass(frozen=True)
class ServerLimits:
    """What one request to the server may carry (``GET /v1/limits``; see the server's ``--max-*`` options)."""

    max_k: int
    max_images: int
    max_items: int
    max_body_bytes: int
    max_pixels: int
    max_batch: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerLimits:
        return cls(**{f: int(data[f]) for f in cls.__dataclass_fields__})


# bytes of a JSON request around its images (ids, metadata, punctuation) that a size estimate leaves for them
_ENVELOPE = 4096


class ReidClient:
    """A synchronous client of one reidserve server (see the module docstring). One instance is for one thread;
    :meth:`clone` makes another for another thread."""

    def __init__(self, url: str = "http://127.0.0.1:8080", token: str | None = None, *, timeout: float = 30.0,
                 upload: str = "json", transport: httpx.BaseTransport | None = None) -> None:
        if upload not in ("json", "multipart"):
            raise ValueError(f"upload must be json or multipart, got {upload!r}")
        self.url = url.rstrip("/")
        self.upload = upload
        self.timeout = timeout
        self._token = token
        self._transport = transport
        self._limits: ServerLimits | None = None
        self._limits_known = False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def clone(self) -> ReidClient:
        """A new client of the same server, token and options (its own connections), sharing the known limits."""
        other = ReidClient(self.url, self._token, timeout=self.timeout, upload=self.upload, transport=self._transport)
        other._limits, other._limits_known = self._limits, self._limits_known
        return other

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise :class:`ReidClientError` unless the answer is 2xx."""
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ReidClientError(0, f"cannot reach {self.url} ({type(exc).__name__}: {exc}); is `reidserve serve` "
                                     "running there?", method, path) from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text or r.reason_phrase
            raise ReidClientError(r.status_code, detail, method, path)
        return r

    def post_json(self, path: str, body: Any) -> httpx.Response:
        """POST ``body`` (an object, or JSON already encoded as bytes), refusing (status 0) a body larger than the
        server takes."""
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        lim = self.limits()
        if lim is not None and len(data) > lim.max_body_bytes:
            raise ReidClientError(0, f"the request body would be {len(data)} bytes, above the server's limit of "
                                     f"{lim.max_body_bytes} (its --max-body-mb): send fewer or smaller images per "
                                     "request", "POST", path)
        return self.request("POST", path, content=data, headers={"content-type": "application/json"})

    # -- limits -------------------------------------------------------------------------------------------------
    def limits(self) -> ServerLimits | None:
        """The server's limits (asked once); None when the server does not say (no ``/v1/limits``, or it needs a
        token this client lacks): then requests are not checked before they are sent."""
        if not self._limits_known:
            try:
                self._limits = ServerLimits.from_json(self.request("GET", "/v1/limits").json())
            except ReidClientError as exc:
                if exc.status not in (401, 403, 404, 405):
                    raise
                self._limits = None
            except (KeyError, TypeError, ValueError):  # an answer of another shape: say nothing
                self._limits = None
            self._limits_known = True
        return self._limits

    def _check_count(self, what: str, count: int, limit_name: str, path: str, hint: str) -> None:
        lim = self.limits()
        if lim is None:
            return
        limit = int(getattr(lim, limit_name))
        if count > limit:
            flag = "--" + limit_name.replace("_", "-")
            raise ReidClientError(0, f"{count} {what} in one request; the server takes at most {limit} (its {flag})"
                                     f": {hint}", "POST", path)

    def _image_chunks(self, blobs: list[bytes]) -> list[list[bytes]]:
        """``blobs`` split into runs that fit the server's images-per-request and body limits."""
        lim = self.limits()
        if lim is None:
            return [blobs]
        budget = max(1, lim.max_body_bytes - _ENVELOPE)
        chunks: list[list[bytes]] = [[]]
        size = 0
        for i, b in enumerate(blobs):
            cost = 4 * ((len(b) + 2) // 3) + 4  # base64 and JSON quoting
            if cost > budget:
                raise ReidClientError(0, f"image {i} ({len(b)} bytes) is too large for the server's request limit of"
                                         f" {lim.max_body_bytes} bytes (its --max-body-mb)", "POST", "/v1/embed")
            if chunks[-1] and (len(chunks[-1]) >= lim.max_images or size + cost > budget):
                chunks.append([])
                size = 0
            chunks[-1].append(b)
            size += cost
        return chunks

    # -- API ------------------------------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """``[n, dim]`` L2-normalised embeddings of ``images`` (in as many requests as the server's limits need)."""
        blobs = [image_bytes(im) for im in images]
        parts = []
        for chunk in self._image_chunks(blobs):
            if self.upload == "multipart":
                files = [("images", (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate(chunk)]
                r = self.request("POST", "/v1/embed", files=files)
            else:
                r = self.post_json("/v1/embed", {"images": [base64.b64encode(b).decode("ascii") for b in chunk]})
            parts.append(np.asarray(r.json()["embeddings"], dtype=np.float32).reshape(len(chunk), -1))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def add(self, item_id: str, *, image: ImageLike | None = None, images: Sequence[ImageLike] | None = None,
            embedding: Sequence[float] | np.ndarray | None = None, camera: str | None = None,
            time: float | None = None, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Add or replace one item (give exactly one of ``image``, ``images``, ``embedding``)."""
        if self.upload == "multipart" and embedding is None:
            ims = [image] if image is not None else list(images or [])
            self._check_count("images", len(ims), "max_images", "/v1/gallery", "give the item fewer images")
            data: dict[str, str] = {"id": item_id}
            if camera is not None:
                data["camera"] = camera
            if time is not None:
                data["time"] = repr(float(time))
            if metadata:
                data["metadata"] = json.dumps(dict(metadata))
            files = [("images", (f"{i}.img", image_bytes(im), "application/octet-stream")) for i, im in
                     enumerate(ims)]
            return self.request("POST", "/v1/gallery", data=data, files=files).json()
        item = self.item(item_id, image=image, images=images, embedding=embedding, camera=camera, time=time,
                         metadata=metadata)
        return self.add_many([item])

    @staticmethod
    def item(item_id: str, *, image: ImageLike | None = None, images: Sequence[ImageLike] | None = None,
             embedding: Sequence[float] | np.ndarray | None = None, camera: str | None = None,
             time: float | None = None, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One item of :meth:`add_many` as JSON."""
        out: dict[str, Any] = {"id": item_id}
        if image is not None:
            out["image"] = _b64(image)
        if images is not None:
            out["images"] = [_b64(im) for im in images]
        if embedding is not None:
            out["embedding"] = np.asarray(embedding, dtype=np.float64).tolist()
        if camera is not None:
            out["camera"] = camera
        if time is not None:
            out["time"] = float(time)
        if metadata:
            out["metadata"] = dict(metadata)
        return out

    def add_many(self, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Upsert several items (dicts as made by :meth:`item`) in one request, one transaction. A request above the
        server's limits is refused before it is sent (split it, or use :mod:`reidserve.gallery_import`)."""
        batch = list(items)
        hint = "split them into several requests (`reidserve query import` does)"
        self._check_count("items", len(batch), "max_items", "/v1/gallery", hint)
        images = sum(1 if "image" in it else len(it.get("images") or ()) for it in batch)
        self._check_count("images", images, "max_images", "/v1/gallery", hint)
        return self.post_json("/v1/gallery", {"items": batch}).json()

    def existing(self, item_ids: Sequence[str]) -> set[str]:
        """The ids of ``item_ids`` that are in the gallery (as many requests as the server's item limit needs)."""
        ids = list(item_ids)
        lim = self.limits()
        step = lim.max_items if lim is not None else 1024
        found: set[str] = set()
        for start in range(0, len(ids), step):
            r = self.post_json("/v1/gallery/exists", {"ids": ids[start:start + step]})
            found.update(r.json()["present"])
        return found

    def get(self, item_id: str, *, include_embedding: bool = False) -> dict[str, Any]:
        params = {"include_embedding": "true"} if include_embedding else None
        return self.request("GET", _item_path(item_id), params=params).json()

    def delete(self, item_id: str) -> dict[str, Any]:
        return self.request("DELETE", _item_path(item_id)).json()

    def search(self, *, image: ImageLike | None = None, embedding: Sequence[float] | np.ndarray | None = None,
               k: int = 10, cameras: Sequence[str] | None = None, exclude_cameras: Sequence[str] = (),
               time_min: float | None = None, time_max: float | None = None,
               exclude_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The top-``k`` hits (``id``, ``score``, ``camera``, ``time``, ``metadata``) for an image or embedding."""
        lim = self.limits()
        if lim is not None and k > lim.max_k:
            raise ReidClientError(0, f"k={k} is above the server's limit of {lim.max_k} results per search (its "
                                     "--max-k): ask for fewer", "POST", "/v1/search")
        flt: dict[str, Any] = {}
        if cameras is not None:
            flt["cameras"] = list(cameras)
        if exclude_cameras:
            flt["exclude_cameras"] = list(exclude_cameras)
        if time_min is not None:
            flt["time_min"] = float(time_min)
        if time_max is not None:
            flt["time_max"] = float(time_max)
        if exclude_ids:
            flt["exclude_ids"] = list(exclude_ids)
        if self.upload == "multipart" and image is not None:
            data = {"k": str(int(k))}
            if flt:
                data["filter"] = json.dumps(flt)
            files = [("image", ("query.img", image_bytes(image), "application/octet-stream"))]
            return self.request("POST", "/v1/search", data=data, files=files).json()["hits"]
        body: dict[str, Any] = {"k": int(k)}
        if image is not None:
            body["image"] = _b64(image)
        if embedding is not None:
            body["embedding"] = np.asarray(embedding, dtype=np.float64).tolist()
        if flt:
            body["filter"] = flt
        return self.post_json("/v1/search", body).json()["hits"]

    def stats(self) -> dict[str, Any]:
        return self.request("GET", "/v1/stats").json()

    def health(self) -> bool:
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return self.request("GET", "/metrics").text
