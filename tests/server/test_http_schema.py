"""Property-based run of schemathesis against the live server's own OpenAPI document (/openapi.json): schema-valid
and schema-invalid requests to every operation, bounded in examples and time. Checks: no 5xx, every status code
and content type documented, responses match their schemas, schema-invalid requests refused with a 4xx."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_support import ServerThread, test_settings

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 8  # per operation and generation mode: ~200 requests in a few seconds
BUDGET_SECONDS = 90.0  # a hard bound on the whole run (2 shared cores)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def served(
    tiny_annotated_bundle: Path, tiny_annotated_index: Path, tmp_path_factory
) -> Iterator[ServerThread]:
    index = tmp_path_factory.mktemp("schema") / "index"
    shutil.copytree(tiny_annotated_index, index)  # the run may add and delete images
    st_ = ServerThread(
        test_settings(bundle=tiny_annotated_bundle, index=index, http_port=0, min_tag_score=0.0)
    )
    assert st_.wait_ready(), st_.server.slot.error
    yield st_
    st_.stop()


def test_the_server_keeps_its_openapi_document(served: ServerThread):
    base = f"http://127.0.0.1:{served.server.http_port}"
    document = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    started = time.monotonic()
    counts: dict[str, int] = {}

    def property_test(op):  # one hypothesis test per operation, positive and negative cases
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

        @settings(
            max_examples=2 * EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case):
            if time.monotonic() - started > BUDGET_SECONDS:
                return
            case.call_and_validate(base_url=base, checks=CHECKS, timeout=30)
            counts[op.label] = counts.get(op.label, 0) + 1

        return run

    for op in operations:
        property_test(op)()
    assert time.monotonic() - started < BUDGET_SECONDS + 30
    assert len(counts) == len(operations) and sum(counts.values()) >= len(operations) * EXAMPLES, counts
