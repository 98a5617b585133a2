"""Finds, or builds just in time, the compiled ``pruneopt::multipos_loss_*`` operators.

Resolution order (done once per process, on first use, never at import):

1. ``PRUNEOPT_CPP_EXT=0`` in the environment: the eager reference, chosen explicitly (no warning).
2. ``prebuilt``: a ``cpp_ext/_C*.so`` next to this file, produced by
   ``PRUNEOPT_BUILD_EXT=1 pip install --no-build-isolation .`` (see ``setup.py``).
3. ``jit``: :func:`torch.utils.cpp_extension.load` into a cache directory keyed by a hash of the
   sources, the torch/Python versions and the build flags (``$PRUNEOPT_CPP_EXT_CACHE``, else
   ``$XDG_CACHE_HOME/pruneopt/cpp_ext``, else ``~/.cache/pruneopt/cpp_ext``). CUDA sources are
   included only when CUDA is available to torch and a CUDA toolkit is found
   (``PRUNEOPT_CPP_EXT_CUDA=0`` disables them); if the CUDA build fails a CPU-only build is tried.
   An exclusive file lock serialises concurrent builds of the same key across processes, and a
   completion marker makes later processes load the cached library without rebuilding.
4. ``reference``: the eager PyTorch implementation, with a one-time warning saying why the
   compiled operator is unavailable and how to get it.

``PRUNEOPT_CPP_EXT_VERBOSE=1`` shows the compiler output of a just-in-time build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from pruneopt.common.files import ExclusiveLock

from ._ops import register as register_ops

__all__ = ["BackendState", "CPU_SOURCES", "CSRC_DIR", "CUDA_SOURCES", "HEADERS", "state", "warn_once"]

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("multipos_loss.cpp", "multipos_loss_cpu.cpp")
CUDA_SOURCES = ("multipos_loss_cuda.cu",)
HEADERS = ("multipos_loss.h", "multipos_loss_cuda_kernels.h")
EXTRA_CFLAGS = ("-O3", "-fno-trapping-math")
EXTRA_CUDA_CFLAGS = ("-O3",)
OP_NAME = "pruneopt::multipos_loss_fwd"

_HOW_TO_FIX = (
    "To get the fused operator, make a C++ compiler (g++/clang++, or set CXX) and ninja "
    "(pip install ninja) available so it is built just in time, or build it once with "
    "`PRUNEOPT_BUILD_EXT=1 pip install --no-build-isolation .`. Set PRUNEOPT_CPP_EXT=0 to choose "
    "the reference explicitly and silence this warning."
)


@dataclasses.dataclass(frozen=True)
class BackendState:
    """Outcome of the backend resolution.

    Attributes:
        name: ``"prebuilt"``, ``"jit"`` or ``"reference"``.
        library: path of the loaded shared library (``None`` for the reference).
        has_cuda: whether the loaded library has CUDA kernels.
        reason_kind: ``"ok"``, ``"disabled"``, ``"no_compiler"``, ``"no_ninja"``,
            ``"build_failed"`` or ``"load_failed"``.
        reason: human readable explanation (for the reference: why the fast path is missing).
    """

    name: str
    library: str | None
    has_cuda: bool
    reason_kind: str
    reason: str


_lock = threading.Lock()
_state: BackendState | None = None
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def state() -> BackendState:
    """Resolve (once) and return the active backend; registers the Python side of the ops."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                resolved = _resolve()
                if resolved.name != "reference":
                    register_ops()
                elif resolved.reason_kind != "disabled":
                    warn_once(
                        "reference",
                        f"cpp_ext: falling back to the eager PyTorch reference for multi_positive_loss "
                        f"({resolved.reason}). {_HOW_TO_FIX}",
                    )
                _state = resolved
    return _state


def _op_has_kernel(dispatch_key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, dispatch_key))
    except RuntimeError:  # operator not defined at all
        return False


def _resolve() -> BackendState:
    if os.environ.get("PRUNEOPT_CPP_EXT", "1").strip() == "0":
        return BackendState("reference", None, False, "disabled", "disabled by PRUNEOPT_CPP_EXT=0")
    if _op_has_kernel("CPU"):  # someone in this process already loaded a library defining the ops
        return BackendState("jit", None, _op_has_kernel("CUDA"), "ok", "operator library already loaded")

    problems: list[str] = []
    prebuilt = _find_prebuilt()
    if prebuilt is not None:
        try:
            torch.ops.load_library(str(prebuilt))
        except (OSError, RuntimeError) as exc:
            problems.append(f"prebuilt library {prebuilt.name} failed to load ({_first_line(exc)})")
        else:
            if _op_has_kernel("CPU"):
                return BackendState("prebuilt", str(prebuilt), _op_has_kernel("CUDA"), "ok", "prebuilt library")
            problems.append(f"prebuilt library {prebuilt.name} does not define {OP_NAME}")

    kind, detail = _jit_prerequisites()
    if kind != "ok":
        problems.append(detail)
        return BackendState("reference", None, False, kind, "; ".join(problems))

    want_cuda = _want_cuda()
    attempts = [True, False] if want_cuda else [False]
    for with_cuda in attempts:
        try:
            library = _jit_build(with_cuda)
        except Exception as exc:  # any build or load failure means: try the next option
            label = "CUDA" if with_cuda else "CPU"
            problems.append(f"just-in-time {label} build failed: {_summarise_build_error(exc)}")
            continue
        if _op_has_kernel("CPU"):
            return BackendState("jit", str(library), _op_has_kernel("CUDA"), "ok", "; ".join(problems) or "jit")
        problems.append(f"just-in-time library {library} does not define {OP_NAME}")
    kind = "load_failed" if any("does not define" in p for p in problems) else "build_failed"
    return BackendState("reference", None, False, kind, "; ".join(problems))


def _find_prebuilt() -> Path | None:
    here = Path(__file__).resolve().parent
    for pattern in ("_C.*.so", "_C.so", "_C.*.pyd", "_C.pyd"):
        matches = sorted(here.glob(pattern))
        if matches:
            return matches[0]
    return None


def _jit_prerequisites() -> tuple[str, str]:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return "no_compiler", f"no C++ compiler found (looked for {compiler!r}; set CXX to override)"
    from torch.utils import cpp_extension  # lazy: it loads setuptools; only just-in-time builds need it

    # pip's ninja lives next to this interpreter; a venv used without activation does not have it on PATH
    bindir = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and (Path(bindir) / "ninja").exists():
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if not cpp_extension.is_ninja_available():
        return "no_ninja", "ninja is not installed (pip install ninja); torch needs it for just-in-time builds"
    return "ok", ""


def _want_cuda() -> bool:
    if os.environ.get("PRUNEOPT_CPP_EXT_CUDA", "1").strip() == "0":
        return False
    if not torch.cuda.is_available():
        return False
    from torch.utils import cpp_extension  # lazy: it loads setuptools; only just-in-time builds need it

    return cpp_extension.CUDA_HOME is not None


def cache_root() -> Path:
    """Directory holding the just-in-time builds."""
    explicit = os.environ.get("PRUNEOPT_CPP_EXT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pruneopt" / "cpp_ext"


def build_key(with_cuda: bool) -> str:
    """Hash of everything the compiled library depends on."""
    h = hashlib.sha256()
    names = CPU_SOURCES + HEADERS + (CUDA_SOURCES if with_cuda else ())
    for name in names:
        h.update(name.encode())
        h.update((CSRC_DIR / name).read_bytes())
    parts = (
        torch.__version__,
        str(torch.version.cuda),
        f"{sys.version_info.major}.{sys.version_info.minor}",
        sys.platform,
        os.environ.get("CXX", "c++"),
        " ".join(EXTRA_CFLAGS),
        " ".join(EXTRA_CUDA_CFLAGS) if with_cuda else "",
        os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        f"cuda={with_cuda}",
    )
    h.update("\0".join(parts).encode())
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path``, waiting for it (released by the OS if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExclusiveLock(path, blocking=True):
        yield


def _jit_build(with_cuda: bool) -> Path:
    from torch.utils import cpp_extension  # lazy: it loads setuptools; only just-in-time builds need it

    key = build_key(with_cuda)[:20]
    name = f"pruneopt_cpp_ext_{key}"
    build_dir = cache_root() / key
    suffix = ".pyd" if sys.platform == "win32" else ".so"
    library = build_dir / f"{name}{suffix}"
    marker = build_dir / "BUILD_COMPLETE"

    def ready() -> bool:
        return marker.exists() and library.exists()

    if not ready():
        with file_lock(cache_root() / f"{key}.lock"):
            if not ready():  # nobody finished it while we waited for the lock
                marker.unlink(missing_ok=True)
                build_dir.mkdir(parents=True, exist_ok=True)
                # torch's own build baton; one left behind by a build that died would make load()
                # wait forever. Every builder of this directory holds our lock, so it is stale.
                (build_dir / "lock").unlink(missing_ok=True)
                sources = [str(CSRC_DIR / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
                cpp_extension.load(
                    name=name,
                    sources=sources,
                    extra_cflags=list(EXTRA_CFLAGS),
                    extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS),
                    extra_include_paths=[str(CSRC_DIR)],
                    build_directory=str(build_dir),
                    with_cuda=with_cuda,
                    is_python_module=False,
                    verbose=os.environ.get("PRUNEOPT_CPP_EXT_VERBOSE") == "1",
                )  # also loads the library into this process
                marker.write_text(f"{library.name}\n")
                return library
    torch.ops.load_library(str(library))
    return library


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _summarise_build_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    shown = (errors or lines or [type(exc).__name__])[:3]
    return " | ".join(shown) + " (set PRUNEOPT_CPP_EXT_VERBOSE=1 for the full compiler output)"
