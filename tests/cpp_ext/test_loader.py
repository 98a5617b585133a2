"""Backend resolution: explicit opt-out, fallback with a warning, build cache keys and locking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import cpp_ext
from cpp_ext import _loader

from .conftest import make_problem

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (repo on sys.path); it must print one JSON line last."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
import json, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cpp_ext
    from cpp_ext import _loader
    lazy = _loader._state is None
    q = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    args = (q, q, labels, labels, torch.arange(5))
    loss = cpp_ext.multi_positive_loss_mean(*args, tau=0.1).item()
    again = cpp_ext.multi_positive_loss_mean(*args, tau=0.1).item()
    ref = cpp_ext.multi_positive_loss_reference_mean(*args, tau=0.1).item()
state = _loader.state()
print(json.dumps(dict(lazy=lazy, backend=state.name, kind=state.reason_kind, reason=state.reason, loss=loss,
                      again=again, ref=ref, warnings=[str(w.message) for w in caught])))
"""


def test_import_is_lazy_and_env_var_forces_reference() -> None:
    out = run_python(PROBE, PRUNEOPT_CPP_EXT="0")
    assert out["lazy"] is True  # importing the package resolves (and builds) nothing
    assert out["backend"] == "reference" and out["kind"] == "disabled"
    assert out["warnings"] == []  # an explicit choice is not warned about
    assert out["loss"] == out["ref"] == out["again"]


@pytest.mark.slow
def test_missing_compiler_falls_back_with_one_warning(tmp_path: Path) -> None:
    if _loader._find_prebuilt() is not None:
        pytest.skip("a prebuilt library is installed, so no compiler is needed")
    out = run_python(PROBE, CXX=str(tmp_path / "no-such-c++"), PRUNEOPT_CPP_EXT_CACHE=str(tmp_path / "cache"))
    assert out["backend"] == "reference" and out["kind"] == "no_compiler"
    assert len(out["warnings"]) == 1  # once per process, not once per call
    message = out["warnings"][0]
    assert "no C++ compiler found" in message and "PRUNEOPT_BUILD_EXT=1" in message
    assert "PRUNEOPT_CPP_EXT=0" in message
    assert out["loss"] == out["ref"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_unloadable_prebuilt_library_is_reported_and_skipped(compiled_backend: str, tmp_path: Path) -> None:
    bogus = tmp_path / "_C.cpython-bogus.so"
    bogus.write_bytes(b"not a shared library")
    code = f"from pathlib import Path\nimport cpp_ext._loader as L\nL._find_prebuilt = lambda: Path({str(bogus)!r})\n"
    out = run_python(code + PROBE)
    assert out["backend"] == "jit"
    assert "prebuilt library _C.cpython-bogus.so failed to load" in out["reason"]
    assert abs(out["loss"] - out["ref"]) < 1e-12


def test_reference_backend_validates_self_index_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_loader, "_state", _loader.BackendState("reference", None, False, "disabled", "test"))
    prob = make_problem(4, 6, 3, 2)
    loss, valid = cpp_ext.multi_positive_loss(*prob.args(), tau=0.2, mode="log_sum")
    ref_loss, ref_valid = cpp_ext.multi_positive_loss_reference(*prob.args(), tau=0.2, mode="log_sum")
    assert torch.equal(loss, ref_loss) and torch.equal(valid, ref_valid)
    with pytest.raises(ValueError, match="self_index values"):
        cpp_ext.multi_positive_loss(prob.q, prob.k, prob.q_labels, prob.k_labels, torch.full((4,), 6), 0.1)


def test_build_key_tracks_sources_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in _loader.CPU_SOURCES + _loader.HEADERS + _loader.CUDA_SOURCES:
        (csrc / name).write_bytes((_loader.CSRC_DIR / name).read_bytes())
    monkeypatch.setattr(_loader, "CSRC_DIR", csrc)
    cpu, cuda = _loader.build_key(False), _loader.build_key(True)
    assert cpu != cuda
    (csrc / "multipos_loss_cuda.cu").write_text("// changed\n")
    assert _loader.build_key(False) == cpu  # CUDA sources do not enter a CPU-only build
    assert _loader.build_key(True) != cuda
    (csrc / "multipos_loss_cpu.cpp").write_text("// changed\n")
    assert _loader.build_key(False) != cpu
    monkeypatch.setenv("CXX", "clang++")
    assert _loader.build_key(False) != _loader.build_key(True)


def test_file_lock_is_exclusive(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    events: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with _loader.file_lock(lock):
            holding.set()
            time.sleep(0.3)
            events.append("holder released")

    t = threading.Thread(target=holder)
    t.start()
    holding.wait()
    with _loader.file_lock(lock):  # separate open() => separate flock, so this waits
        events.append("waiter acquired")
    t.join()
    assert events == ["holder released", "waiter acquired"]


def test_concurrent_first_use_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("PRUNEOPT_CPP_EXT_CACHE", str(tmp_path))
    builds: list[str] = []
    loads: list[str] = []

    def fake_build(name: str, build_directory: str, **kwargs: object) -> None:
        builds.append(name)
        time.sleep(0.3)  # long enough for the other threads to pile up on the lock
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    stale_baton = tmp_path / _loader.build_key(False)[:20] / "lock"  # left by a build that died
    stale_baton.parent.mkdir(parents=True)
    stale_baton.write_text("")
    monkeypatch.setattr(cpp_extension, "load", fake_build)
    monkeypatch.setattr(torch.ops, "load_library", loads.append)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(_loader._jit_build(False))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1  # one compiler run; everyone else loads the finished library
    assert len(set(results)) == 1 and results[0].exists()
    assert len(loads) == 3 and all(Path(p) == results[0] for p in loads)
    assert (results[0].parent / "BUILD_COMPLETE").exists()
    assert not stale_baton.exists()
    _loader._jit_build(False)  # a later process: cache hit, no build
    assert len(builds) == 1 and len(loads) == 4
