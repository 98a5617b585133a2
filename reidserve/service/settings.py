"""The settings of ``reidserve serve``: one pydantic-settings object, :class:`ServiceSettings`, for every option.

Each field is one command-line option and one environment variable, named alike::

    field max_k   <->   reidserve serve --max-k 50   <->   REIDSERVE_MAX_K=50

A flag given on the command line wins over the environment, which wins over the default written here. The
options of ``reidserve serve`` (name, type, range, help text, shown default) are generated from these fields
(:mod:`reidserve.cli.serve_cmds`), so each default and each help text exists once. Two fields have no flag because
they are secrets that should stay out of process listings: ``tokens`` (``REIDSERVE_TOKENS``, comma- or
whitespace-separated; accepted together with the ``--token-file`` ones) and ``milvus_token``
(``REIDSERVE_MILVUS_TOKEN``, for a Milvus server).

This replaces the former ``ServiceConfig`` dataclass field for field, except ``max_body_bytes``, which is now
computed from ``max_body_mb`` (the flag's unit), and ``tokens``, which is merged with ``--token-file`` instead of
replacing it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pruneopt.common.params import parse_shape

from ..errors import ReidserveError

__all__ = ["ENV_PREFIX", "NO_FLAG", "GivenInput", "ServiceSettings", "SettingsError", "check_data_dir"]

ENV_PREFIX = "REIDSERVE_"
NO_FLAG = frozenset({"tokens", "milvus_token"})  # fields set only through the environment (or in code)


class SettingsError(ReidserveError):
    """A ``reidserve serve`` option (flag or environment variable) with a value that cannot be used."""


@dataclass(frozen=True)
class GivenInput:
    """The model input described on the command line (``--input``, ``--mean``, ``--std``, ``--colour``): what the
    service feeds an ONNX model without pruneopt metadata, and what a pruneopt model's metadata must agree with.
    ``mean`` and ``std`` have one value per channel once ``input`` is known."""

    input_shape: tuple[int, int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    colour: str | None


class ServiceSettings(BaseSettings):
    """Everything ``reidserve serve`` can be told (see the module docstring).

    Limits: ``max_body_mb`` (whole request), ``max_images`` (images per request, and files per upload),
    ``max_items`` (gallery items per request), ``max_k`` (results per search), ``max_pixels`` (width x height of
    one image before decoding).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model: Path = Field(description="an .onnx from `pruneopt export --onnx`, or a TensorRT .engine/.plan from "
                                    "`pruneopt export --trt`")
    data_dir: Path = Field(description="the gallery (SQLite + FAISS snapshot), the lock and the generated token "
                                       "live here")
    host: str = Field("127.0.0.1", description="address to listen on (loopback by default)")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port)")
    store: str = Field("sqlite", description="sqlite | milvus-lite:///path/gallery.db | "
                                             "milvus://HOST:19530[/COLLECTION]")
    runtime: Literal["auto", "ort-cpu", "ort-cuda", "ort-trt", "trt"] = Field(
        "auto", description="auto: TensorRT for engines, ONNX Runtime CUDA when available, else CPU")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads (default: ONNX Runtime's "
                                                        "choice)")
    max_batch: int = Field(32, ge=1, le=4096, description="images per model run (micro-batch)")
    max_wait_ms: float = Field(2.0, ge=0, le=1000,
                               description="how long the first request of a micro-batch waits for others")
    index: Literal["flat", "ivf", "hnsw"] = Field(
        "ivf", description="flat: exact search; ivf: flat until --ivf-threshold items, then IVF (approximate, "
                           "faster); hnsw: an HNSW graph (approximate, cheaper per query than IVF at higher recall; "
                           "CPU only, slower to build and to add to)")
    ivf_threshold: int = Field(20_000, ge=1, description="gallery size at which --index ivf trains an IVF index "
                                                         "instead of searching exactly")
    nlist: int = Field(0, ge=0, description="IVF lists (0: about 8 sqrt(n), a power of two)")
    nprobe: int = Field(0, ge=0, description="IVF lists searched (0: nlist/32, >= 16)")
    ivf_codec: Literal["sq8", "flat"] = Field(
        "sq8", description="how IVF lists store vectors: sq8 (8 bits per value: 1/4 of the memory, about 2x the "
                           "searches per second, scores within ~1e-3) or flat (float32)")
    hnsw_m: int = Field(0, ge=0, description="HNSW graph neighbours per vector (0: 32); more: better recall, more "
                                             "memory, slower build")
    ef_search: int = Field(0, ge=0, description="HNSW candidates explored per query (0: 32; at least k); more: "
                                                "better recall, slower search")
    faiss_threads: int = Field(0, ge=0, description="OpenMP threads of one FAISS call: a micro-batch of searches "
                                                    "spreads its queries over them (0: the CPU count, at most 8)")
    search_max_batch: int = Field(64, ge=1, le=4096, description="search requests answered by one index search "
                                                                 "(micro-batch)")
    search_max_wait_ms: float = Field(
        1.0, ge=0, le=1000, description="how long the first search of a micro-batch waits for others (0: no wait: a "
                                        "lone search on an idle server answers in ~2 ms instead of ~4.5, at some "
                                        "throughput under heavy load)")
    faiss_gpu: Literal["auto", "on", "off"] = Field(
        "auto", description="put the index on a GPU when FAISS has GPU support (flat, ivf; hnsw stays on the CPU)")
    snapshot_interval: float = Field(60.0, ge=0, description="seconds between index snapshots (0: only on "
                                                             "shutdown)")
    auth: Literal["mutating", "all", "none"] = Field("mutating", description="which endpoints need a bearer token")
    token_file: Path | None = Field(None, description="tokens, one per line (also REIDSERVE_TOKENS; else one is "
                                                      "generated in DATA_DIR/token)")
    max_body_mb: float = Field(16.0, ge=0.001, description="largest request body, in MiB")
    max_images: int = Field(64, ge=1, le=1024, description="images per request")
    max_items: int = Field(1024, ge=1, le=4096, description="gallery items per request")
    max_k: int = Field(1000, ge=1, le=10_000, description="results per search")
    max_pixels: int = Field(4_000_000, ge=1, description="width x height of one image, checked before decoding")
    header_timeout: float = Field(10.0, gt=0, le=3600, description="seconds a client has to send a request's line "
                                  "and headers (from connecting, or from the first byte of a later request on a "
                                  "kept-alive connection); a slower connection is closed")
    body_timeout: float = Field(60.0, gt=0, le=3600, description="seconds a client has to send a request's body once "
                                "its headers are in (16 MiB in 60 s: 280 KB/s); a slower connection is closed")
    accept_model_change: bool = Field(False, description="serve a gallery filled by another model (only when both "
                                                         "produce the same embeddings)")
    input: Annotated[tuple[int, int, int] | None, NoDecode] = Field(
        None, description="CxHxW input of an ONNX model without pruneopt metadata, e.g. 3x256x128 (with --mean and "
                          "--std; a pruneopt export carries its own)")
    mean: Annotated[tuple[float, ...] | None, NoDecode] = Field(
        None, description="per-channel mean of such a model's input, on pixels scaled to 0..1 (M or M,M,M)")
    std: Annotated[tuple[float, ...] | None, NoDecode] = Field(
        None, description="per-channel std of such a model's input, on pixels scaled to 0..1 (S or S,S,S)")
    colour: Literal["RGB", "L"] | None = Field(
        None, description="colour of such a model's input: RGB, or L (grey) [from --input's channels]")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="server log level")
    access_log: bool = Field(False, description="log every request")
    port_file: Path | None = Field(None, description="write the bound port here once listening (for --port 0)")
    tokens: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="API tokens (REIDSERVE_TOKENS, comma- or whitespace-separated), with the --token-file ones")
    milvus_token: str | None = Field(None, description="user:password or API key of a Milvus server "
                                                       "(REIDSERVE_MILVUS_TOKEN)")

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t for t in re.split(r"[,\s]+", value) if t)
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _parse_input(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_shape(value, "--input", error=ValueError)
        return value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _parse_floats(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(float(v) for v in re.split(r"[,\s]+", value.strip()) if v)
            except ValueError:
                raise ValueError(f"expected numbers like 0.5 or 0.485,0.456,0.406, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _check_model_input(self) -> ServiceSettings:
        given = [n for n in ("input", "mean", "std") if getattr(self, n) is not None]
        if given and len(given) < 3 and self.input is None:
            raise ValueError(f"--{given[0]} describes a model without pruneopt metadata: give --input CxHxW too "
                             "(and --mean, --std)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.input is not None and len(values) not in (1, self.input[0]):
                raise ValueError(f"--{name} has {len(values)} values for {self.input[0]} input channels: give 1 or "
                                 f"{self.input[0]}")
        if self.std is not None and any(v <= 0 or not math.isfinite(v) for v in self.std):
            raise ValueError(f"--std values must be positive, got {self.std}")
        return self

    def model_input(self) -> GivenInput | None:
        """What ``--input``, ``--mean``, ``--std`` and ``--colour`` say about the model's input (None: nothing)."""
        if self.input is None and self.mean is None and self.std is None and self.colour is None:
            return None
        c = self.input[0] if self.input is not None else None

        def per_channel(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
            return values * c if values is not None and c is not None and len(values) == 1 else values

        return GivenInput(self.input, per_channel(self.mean), per_channel(self.std), self.colour)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def limits(self) -> dict[str, int]:
        return {"max_body_bytes": self.max_body_bytes, "max_images": self.max_images, "max_items": self.max_items,
                "max_k": self.max_k, "max_pixels": self.max_pixels}

    @classmethod
    def load(cls, **given: Any) -> ServiceSettings:
        """The settings from ``given`` values (flags), then ``REIDSERVE_*`` variables, then the defaults; raises
        :class:`SettingsError` with one line naming the flag and the variable of each bad value."""
        try:
            return cls(**given)
        except ValidationError as exc:
            raise SettingsError("; ".join(_describe(e) for e in exc.errors(include_url=False))) from None


def check_data_dir(path: Path) -> None:
    """Raise :class:`SettingsError` unless ``path`` is a folder or can be made one by creating only its last part
    (its parent exists): a mistyped ``--data-dir`` must not create a tree of folders."""
    if path.is_dir():
        return
    if path.exists():
        raise SettingsError(f"--data-dir {path} is not a folder")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise SettingsError(f"--data-dir {path}: its parent folder {parent} does not exist; create it first (serve "
                            "creates only the data folder itself)")


def _describe(error: Any) -> str:
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not error.get("loc"):  # a check across fields: its message names the flags
        return message
    name = str(error["loc"][0])
    where = f"--{name.replace('_', '-')} / ${ENV_PREFIX}{name.upper()}" if name not in NO_FLAG else \
        f"${ENV_PREFIX}{name.upper()}"
    if error.get("type") == "missing":
        return f"{where} is required"
    return f"{where}: {message}"
