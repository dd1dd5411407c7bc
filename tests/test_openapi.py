"""The REST API's OpenAPI description (GET /openapi.json) against a real server: schemathesis
loads it as a valid OpenAPI 3 document and, generating requests from it for every operation,
never gets a 5xx. (Driven through schemathesis' Python API: its pytest plugin does not run
under this pytest.)"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from conftest import affine_version  # noqa: E402

AUTH = {"Authorization": "Bearer s3cret"}


def test_no_operation_answers_5xx(repo, start_server, tmp_path):
    base, build = repo
    affine_version(base, 1, build)
    token = tmp_path / "token"
    token.write_text("s3cret")
    server = start_server(base, "--admin_token_file", str(token))
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    schema.config.update(base_url=server.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    failures = []
    for op in operations:
        if op.path in ("/v1/admin/models/{model}/unload", "/v2/repository/models/{model}/unload"):
            continue  # would unload the model the other operations call

        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def run(case):
            response = case.call(headers=AUTH, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

        run()
    assert not failures, "\n".join(failures[:10])
