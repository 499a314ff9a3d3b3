"""Fuzz every operation of the running service from its own OpenAPI document (schemathesis).

Every check runs except "schema-valid data is accepted": the service also enforces rules a
schema cannot state (an address inside its network, two different link ends, a source named
one way only) and answers those with 422, as documented.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from federation.config import StorageConfig

pytest_plugins = ["integration.directory_fixtures"]


def test_fuzzing_the_api_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    from nvi.lab.directories import Credentials, ServiceProcess, write_config

    credentials = Credentials()
    storage = StorageConfig(backend="sqlite", path=tmp_path / "directory.db")
    config = tmp_path / "directory.toml"
    port = write_config(config, credentials, storage, max_wait=0.2)
    process = ServiceProcess(config, port)
    process.start()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    try:
        run = subprocess.run(
            [
                st,
                "run",
                f"{process.url}/v1/openapi.json",
                "--tls-verify",
                str(process.ca_file),
                "--header",
                f"Authorization: Bearer {credentials.admin}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        process.stop()
    report = run.stdout[-6000:]
    assert run.returncode == 0, report
    assert "29/29" in report and "Tested: 29" in report, report
    log = config.with_suffix(".log").read_text()
    assert "unexpected failure" not in log, log[-3000:]  # the service's own 500 path
