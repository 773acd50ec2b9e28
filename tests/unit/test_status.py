"""``transport.status``: integer status values as replies carry them."""

from __future__ import annotations

import grpc

from transport.status import status_code


def test_every_status_code_round_trips_through_its_value() -> None:
    for code in grpc.StatusCode:
        assert status_code(code.value[0]) is code


def test_an_unknown_value_is_unknown() -> None:
    assert status_code(999) is grpc.StatusCode.UNKNOWN
