from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from export.onnx import ExportResult, export_onnx
from pruneopt.checkpoint import save_subnet
from pruneopt.common.threads import torch_threads
from pruneopt.models import build, default_spec
from pruneopt.space import PruningSpace, Regime
from pruneopt.thinning import thin
from tests.support.models import randomise_bn

CIFAR = (3, 32, 32)


@dataclass
class Exported:
    model: nn.Module
    path: Path
    result: ExportResult
    shape: tuple[int, int, int]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread: its OpenMP threads spin-wait, which on a loaded 2-core machine makes two threads
    several times slower than one (ONNX Runtime keeps its own pool)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def r20(export_dir: Path) -> Exported:
    """resnet20 (CIFAR, logits) with non-trivial batch norms, legacy exporter, verified at 1, 7, 64."""
    torch.manual_seed(0)
    model = randomise_bn(build(default_spec("resnet20"))).eval()
    res = export_onnx(model, export_dir / "r20.onnx", CIFAR, exporter="legacy")
    return Exported(model, res.path, res, CIFAR)


@pytest.fixture(scope="session")
def r20_embedding(export_dir: Path) -> Exported:
    """resnet20 features-only + L2 normalisation, through the dynamo exporter (the one dynamo export)."""
    torch.manual_seed(1)
    model = randomise_bn(build(default_spec("resnet20", features_only=True)), seed=1).eval()
    res = export_onnx(model, export_dir / "r20_emb.onnx", CIFAR, exporter="dynamo", normalize=True)
    return Exported(model, res.path, res, CIFAR)


@pytest.fixture(scope="session")
def subnet_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A resnet20 parent and a thinned child at about half its FLOPs, saved as subnetwork folders."""
    root = tmp_path_factory.mktemp("subnets")
    torch.manual_seed(2)
    parent = randomise_bn(build(default_spec("resnet20")), seed=2).eval()
    spec = PruningSpace(parent.spec).sample(1, Regime(0.5, 0.02), seed=0).spec(0)
    return save_subnet(parent, root / "parent"), save_subnet(thin(parent, spec), root / "half")
