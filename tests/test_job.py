"""What a handler receives: the job, its payload decoded as strict JSON, its key."""

from __future__ import annotations

import pytest

from workerhost.errors import JobError
from workerhost.model.job import Job, parse_unique, row_unique


@pytest.mark.parametrize("payload", [b'{"total": NaN}', b'{"total": Infinity}',
                                     b'[-Infinity]', b"NaN"])
def test_nan_and_infinity_are_not_json(payload: bytes) -> None:
    job = Job(function="f", payload=payload, unique="u", handle="H:1")
    with pytest.raises(JobError, match="strict JSON has no NaN or Infinity") as raised:
        job.json()
    assert not raised.value.retryable, "no retry makes the payload JSON"


def test_numbers_and_strings_that_look_alike_still_decode() -> None:
    job = Job(function="f", payload=b'{"a": 1e308, "b": "NaN", "c": -0.5}', unique="u",
              handle="H:1")
    assert job.json() == {"a": 1e308, "b": "NaN", "c": -0.5}


@pytest.mark.parametrize("payload", [
    '{"name": "Zoë", "n": [1, 2.5, null]}'.encode(),
    '{"name": "Zoë"}'.encode("utf-16"), '{"name": "Zoë"}'.encode("utf-8-sig"),
    b'"\\ud800"', b"  [ ]  "])
def test_a_payload_decodes_as_json_loads_decodes_it(payload: bytes) -> None:
    import json

    assert Job(function="f", payload=payload, unique="u", handle="H:1").json() == \
        json.loads(payload)


@pytest.mark.parametrize("payload", [b"", b"{", b'{"a": 1} x', b"\xff\xfe\x00"])
def test_a_payload_that_is_not_json_is_a_job_error(payload: bytes) -> None:
    with pytest.raises(JobError, match="payload is not JSON"):
        Job(function="f", payload=payload, unique="u", handle="H:1").json()


def test_a_ledger_jobs_key_is_its_row_whatever_its_unique_says() -> None:
    one = Job(function="f", payload=b"", unique="anything", handle="H:1", ledger=7)
    other = Job(function="f", payload=b"", unique="else", handle="H:2", ledger=7)
    assert one.key == other.key == b"f\0L7"
    loose = Job(function="f", payload=b"", unique="u-1", handle="H:3")
    assert loose.key == b"f\0u-1"


def test_the_unique_of_a_ledger_delivery_names_its_row_and_token() -> None:
    assert parse_unique("L42:" + "A" * 32) == (42, "A" * 32)
    assert parse_unique("plain") == (None, "plain")
    assert row_unique(b'{"id": 1, "event_id": "0123"}', 9) == "0123"
    assert row_unique(b"not json", 9) == "workerhost-outbox-9"


def test_a_jobs_unique_from_reordered_keys_reuses_its_decoded_payload() -> None:
    """MySQL puts event_id before id: the job's own decode serves both its unique and its
    handler, once."""
    job = Job(function="f", payload=b'{"event": "insert", "event_id": "e-1", "id": 7}',
              unique="", handle="H:1")
    assert row_unique(job.payload, 9, job.json) == "e-1"
    assert job._is_decoded
    broken = Job(function="f", payload=b'{"event_id": "e-1", ', unique="", handle="H:2")
    assert row_unique(broken.payload, 9, broken.json) == "workerhost-outbox-9"
