"""The one settings object: parsed once from the environment, with v1.1's rows carried already."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.settings import Settings
from jobs.types.spec import Limits


def test_defaults_match_the_contracts_settings_table() -> None:
    s = Settings()
    assert s.result_ttl == 86_400 and s.max_queued_per_client == 20_000 and s.max_batch_jobs == 10_000
    assert s.webhook_allow_private is False and s.max_stored_bytes_per_client == 2_147_483_648
    assert s.limits == Limits() and s.limits.max_primes_count_width == 10**12
    assert s.paused_ttl == 7 * 86_400
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.result_ttl = 1  # type: ignore[misc]


def test_from_env_reads_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RESULT_TTL": "600", "HEARTBEAT_TIMEOUT": "7", "MAX_FIB_N": "99", "MAX_PRIMES_COUNT_WIDTH": "1000",
           "JOB_TIMEOUTS": "primes=5", "HOST": "127.0.0.1", "MAX_BATCH_JOBS": "3", "WEBHOOK_SECRET": "whsec_x",
           "WEBHOOK_ALLOW_PRIVATE": "1", "MAX_STORED_BYTES_PER_CLIENT": "1024", "MAX_QUEUED_PER_CLIENT": "0",
           "PAUSED_TTL": "60"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    assert (s.result_ttl, s.heartbeat_timeout, s.limits.max_fib_n) == (600, 7, 99)
    assert s.limits.max_primes_count_width == 1000
    assert s.job_timeout("primes") == 5 and s.job_timeout("fibonacci") == Settings().job_timeout("fibonacci")
    assert (s.host, s.max_batch_jobs, s.webhook_secret, s.webhook_allow_private) == ("127.0.0.1", 3, "whsec_x", True)
    assert (s.max_stored_bytes_per_client, s.max_queued_per_client, s.paused_ttl) == (1024, 0, 60)
    assert "whsec_x" not in repr(s)  # the signing key never reaches a log line


def test_a_malformed_number_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_JOBS", "lots")
    with pytest.raises(SystemExit, match="MAX_BATCH_JOBS"):
        Settings.from_env()
    monkeypatch.setenv("MAX_BATCH_JOBS", "9" * 5000)
    with pytest.raises(SystemExit, match="MAX_BATCH_JOBS"):
        Settings.from_env()
