"""Where training runs: ``--device auto|cpu|cuda[:N]``, one device per evaluation worker, and the mixed precision of
a CUDA device.

* :func:`resolve_device` turns ``auto`` into ``cuda`` when torch sees a GPU, else ``cpu``, and refuses a CUDA
  device torch cannot see (never a silent fall-back to the CPU);
* :func:`worker_devices` pins evaluation workers to devices: with ``cuda``, worker ``i`` gets ``cuda:{i mod G}`` of
  the ``G`` visible GPUs (so ``--workers G`` is one worker per GPU); ``cuda:N`` pins every worker to GPU ``N``;
* :func:`precision_for` picks autocast in bfloat16 where the GPU supports it, else float16 with a gradient scaler;
  on the CPU nothing changes (float32, no autocast), so CPU runs keep their figures bit for bit.

The GPU count is read through :func:`visible_gpus` and bf16 support through :func:`bf16_supported`, so tests fake
them on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PruneoptError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def visible_gpus() -> int:
    """How many CUDA devices torch sees."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_device(text: str) -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are checked against what torch sees."""
    value = text.strip().lower()
    if value == "auto":
        return "cuda" if visible_gpus() > 0 else "cpu"
    if value == "cpu":
        return value
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        n = visible_gpus()
        if n == 0:
            raise PruneoptError(f"--device {text}: torch sees no CUDA device (torch {torch.__version__}, CUDA build "
                                f"{torch.version.cuda or 'none'}); use --device cpu or auto")
        if ":" in value and int(value[5:]) >= n:
            raise PruneoptError(f"--device {text}: torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return value
    raise PruneoptError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def worker_devices(device: str, workers: int) -> list[str] | None:
    """The device of each of ``workers`` evaluation workers (``None``: the CPU, nothing to pin)."""
    if not is_cuda(device):
        return None
    if ":" in device:
        return [device] * workers
    n = visible_gpus()
    if n == 0:
        raise PruneoptError("--device cuda: torch sees no CUDA device")
    return [f"cuda:{i % n}" for i in range(workers)]


def default_workers(device: str) -> int:
    """Evaluation workers when ``--workers`` is not given: one per visible GPU with ``--device cuda``, else 1."""
    return max(1, visible_gpus()) if device == "cuda" else 1


@dataclass(frozen=True)
class Precision:
    """How a training step computes: ``dtype`` under autocast (``None``: float32, no autocast) and whether a
    gradient scaler guards float16 gradients."""

    dtype: torch.dtype | None = None
    scaler: bool = False

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


FLOAT32 = Precision()


def precision_for(device: str) -> Precision:
    """bfloat16 autocast on a GPU that supports it, float16 autocast + gradient scaler on an older one, float32 on
    the CPU."""
    if not is_cuda(device):
        return FLOAT32
    return Precision(torch.bfloat16) if bf16_supported() else Precision(torch.float16, scaler=True)
