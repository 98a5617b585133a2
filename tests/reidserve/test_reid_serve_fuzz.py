"""Schemathesis over the service's OpenAPI document: generated valid and invalid requests, with a token, against a
real server -- none may be answered with a 5xx, and every answer must agree with the document (documented status
codes, content types, headers and response schemas; invalid JSON bodies refused). Bounded (a fixed number of
examples per operation).

Two of schemathesis's checks cannot hold for this API and are left out: "schema-valid request rejected" (a schema
cannot say that a base64 string must decode to an image, or that an embedding must have the model's size), and,
for multipart bodies only, "schema-violating request accepted" (a form cannot carry an empty array: the field is
simply absent, so schemathesis's "k became []" case is a valid request without ``k``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="schemathesis is a dev dependency: pip install schemathesis")
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# before schemathesis builds its strategies: hypothesis caches go to a temporary folder, not the checkout
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "reidserve-hypothesis"))

for _module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency: pip install schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.core.failures import Failure, FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.serving import export_models  # noqa: E402

TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES = 20


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")


@pytest.fixture(scope="module")
def fuzz_server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("serve-fuzz")
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(data), "--max-body-mb", "2", "--threads", "1"]
    with ServerProcess(args, tokens=[TOKEN]) as srv:
        yield srv


@pytest.mark.slow
def test_no_server_errors(fuzz_server: ServerProcess) -> None:
    """Every operation, each content type, valid and invalid data: no 5xx (and no connection failure), and no
    answer that disagrees with the OpenAPI document."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    errors: list[str] = []
    mismatches: list[str] = []
    counts: dict[str, int] = {}

    def fuzz(strategy: Any, label: str) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(headers=auth, timeout=60)
            counts[label] = counts.get(label, 0) + 1
            if response.status_code >= 500:
                errors.append(f"{label}: {response.status_code} {response.text[:300]}")
            excluded = [positive_data_acceptance]
            if case.media_type == "multipart/form-data":
                excluded.append(negative_data_rejection)
            try:
                case.validate_response(response, headers=auth, excluded_checks=excluded)
            except (Failure, FailureGroup) as exc:  # what schemathesis's checks found
                mismatches.append(f"{label}: {str(exc)[:600]}")

        try:
            run()
        except Unsatisfiable:  # e.g. no invalid request exists for an operation without parameters
            skipped.append(label)

    skipped: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            for media in op.get_request_payload_content_types() or [None]:
                strategy = op.as_strategy(mode, media_type=media) if media else op.as_strategy(mode)
                fuzz(strategy, f"{op.label} {mode.value} {media or ''}")
    print(f"fuzzed {sum(counts.values())} requests over {len(counts)} operation/mode/content-type combinations; "
          f"nothing to generate for: {skipped}")
    assert not errors, "\n".join(errors[:20])
    assert not mismatches, "\n\n".join(mismatches[:10])
    assert len(counts) >= 14 and sum(counts.values()) >= 150, counts  # the fuzzing did reach the operations


def test_server_survived_the_fuzzing(fuzz_server: ServerProcess) -> None:
    import httpx

    st = httpx.get(fuzz_server.url + "/v1/stats", timeout=30).json()
    assert st["torch_loaded"] is False and st["batching"]["failures"] == 0
    assert st["gallery"]["items"] == st["gallery"]["store_rows"] == st["gallery"]["index"]["ntotal"]
    assert "reidserve_requests_total" in httpx.get(fuzz_server.url + "/metrics", timeout=30).text
    text = httpx.get(fuzz_server.url + "/metrics", timeout=30).text
    assert 'status="500"' not in text and 'status="503"' not in text
