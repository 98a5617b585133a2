"""``reidserve serve``: its options are generated from :class:`~reidserve.service.settings.ServiceSettings`.

Each settings field with a flag becomes one option: ``--field-name``, a click type from the field's type and
bounds (``Literal`` -> a choice, ``int``/``float`` with ``ge``/``le`` -> a range, ``bool`` -> a flag, ``Path`` ->
a path, see ``_PATHS``), the field's description as help and its default as the shown default. Only the options
given on the command line are passed to the settings, which take the rest from ``REIDSERVE_*`` variables and
their defaults. The serving process never imports torch.
"""

from __future__ import annotations

import logging
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import annotated_types
import click
from click.core import ParameterSource
from pydantic.fields import FieldInfo

from pruneopt.common.logs import setup_logging

from ..service.settings import ENV_PREFIX, NO_FLAG, ServiceSettings

__all__ = ["serve", "settings_options"]

# path options: what the path must be (click checks it before anything starts)
_PATHS = {
    "model": click.Path(dir_okay=False, path_type=Path),
    "data_dir": click.Path(file_okay=False, path_type=Path),
    "token_file": click.Path(dir_okay=False, exists=True, path_type=Path),
    "port_file": click.Path(dir_okay=False, path_type=Path),
}
_HIDDEN = frozenset({"port_file"})  # for tests and scripts (with --port 0)


def _bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out.update(min=m.gt, min_open=True)
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
        elif isinstance(m, annotated_types.Lt):
            out.update(max=m.lt, max_open=True)
    return out


def _click_type(name: str, info: FieldInfo) -> Any:
    """The click type of a settings field (optional types unwrapped)."""
    kind = info.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(kind)])
    if kind is Path:
        return _PATHS.get(name, click.Path(path_type=Path))
    bounds = _bounds(info)
    if kind is int:
        return click.IntRange(**bounds, clamp=False) if bounds else int
    if kind is float:
        return click.FloatRange(**bounds) if bounds else float
    return str


def _option(name: str, info: FieldInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    flag = "--" + name.replace("_", "-")
    text = info.description or ""
    if info.is_required():
        text += f" (required; or ${ENV_PREFIX}{name.upper()})"
    if info.annotation is bool:
        return click.option(flag, name, is_flag=True, default=False, help=text, hidden=name in _HIDDEN)
    default = None if info.is_required() else info.default
    return click.option(flag, name, type=_click_type(name, info), default=default,
                        show_default=default is not None, help=text, hidden=name in _HIDDEN)


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``command`` with one option per :class:`ServiceSettings` field that has a flag, in field order."""
    for name, info in reversed(list(ServiceSettings.model_fields.items())):
        if name not in NO_FLAG:
            command = _option(name, info)(command)
    return command


@click.command("serve")
@settings_options
@click.pass_context
def serve(ctx: click.Context, **values: Any) -> None:
    """Serve a re-ID model: embeddings, a durable gallery and top-k search over HTTP (OpenAPI at /docs).

    Every option can also come from an environment variable REIDSERVE_<OPTION> (e.g. REIDSERVE_MAX_K=50);
    the command line wins. Tokens: --token-file, or REIDSERVE_TOKENS (comma-separated).

    \b
    reidserve serve --model winner.onnx --data-dir gallery/
    reidserve serve --model r50.onnx --data-dir g/ --store milvus-lite:///srv/g.db --auth all
    """
    given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    settings = ServiceSettings.load(**given)
    # idle OpenMP threads sleep instead of spinning on the cores the event loop needs: set before FAISS loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # lazy: FastAPI, uvicorn and FAISS are loaded only by a serving process (and after the line above)
    from ..service.server import serve as run_server

    setup_logging(settings.log_level, force=True)  # the server's loggers (uvicorn's access log too) go through it
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    run_server(settings, announce=lambda line: click.echo(line, err=True))
