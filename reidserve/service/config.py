"""The service's settings (:class:`ServiceConfig`), as given to ``reidserve serve``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServiceConfig"]


@dataclass
class ServiceConfig:
    """Everything ``reidserve serve`` can be told; defaults are the command's defaults.

    Limits: ``max_body_bytes`` (whole request), ``max_images`` (images per request, and files per upload),
    ``max_items`` (gallery items per request), ``max_k`` (results per search), ``max_pixels`` (width x height of
    one image before decoding).
    """

    model: Path
    data_dir: Path
    store: str = "sqlite"
    runtime: str = "auto"
    threads: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 2.0
    index: str = "ivf"
    ivf_threshold: int = 20_000
    nlist: int = 0
    nprobe: int = 0
    ivf_codec: str = "sq8"  # how IVF lists store vectors: sq8 or flat
    hnsw_m: int = 0  # 0: 32
    ef_search: int = 0  # 0: 32
    faiss_threads: int = 0  # 0: the CPU count, at most 8
    search_max_batch: int = 64
    search_max_wait_ms: float = 1.0
    faiss_gpu: str = "auto"
    snapshot_interval: float = 60.0
    auth: str = "mutating"
    token_file: Path | None = None
    tokens: tuple[str, ...] | None = None  # None: resolve from token_file / $REIDSERVE_TOKENS / DATA_DIR/token
    max_body_bytes: int = 16 * 2**20
    max_images: int = 64
    max_items: int = 1024
    max_k: int = 1000
    max_pixels: int = 4_000_000
    accept_model_change: bool = False
    milvus_token: str | None = None

    def limits(self) -> dict[str, int]:
        return {"max_body_bytes": self.max_body_bytes, "max_images": self.max_images, "max_items": self.max_items,
                "max_k": self.max_k, "max_pixels": self.max_pixels}
