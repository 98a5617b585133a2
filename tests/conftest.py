"""Fixtures and hooks shared by every test folder.

* ``gpu`` tests (``@pytest.mark.gpu``) are skipped where torch sees no CUDA device; ``slow`` tests are the ones
  ``make test-fast`` (``pytest -m "not slow and not gpu"``) leaves out. Both markers are registered in
  pyproject.toml (``--strict-markers``).
* torch's global generator is seeded before every test of a process that has loaded torch (a process that has
  not -- the service's tests run alone -- is left without it).
* the root logger's handlers and level are put back after every test (a command line run in the test process
  installs its log handler there: :func:`pruneopt.common.logs.setup_logging`).
* ``single_thread``: torch on one thread for the test.

Helpers that are not fixtures live in :mod:`tests.support`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from pruneopt.common.threads import torch_threads


def _cuda_available() -> bool:
    try:
        import torch  # lazy: only asked when a gpu test was collected
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Many tiny forward passes run fastest (and steadiest on a shared machine) on one thread."""
    with torch_threads(1):
        yield
