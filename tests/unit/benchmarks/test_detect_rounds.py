"""benchmarks.detect's request count per round: every round holds its waves."""

from __future__ import annotations

import pytest

from benchmarks.detect_rows import round_requests

pytestmark = pytest.mark.unit


def test_each_round_holds_the_waves_whatever_the_number_of_rounds() -> None:
    # 16 clients, 3 waves: 48 requests in each of 2 rounds, not 48 over both.
    assert round_requests(48, 3, 16, 2) == 48
    assert round_requests(48, 3, 64, 2) == 192


def test_a_low_concurrency_row_splits_its_requests_over_the_rounds() -> None:
    assert round_requests(48, 3, 1, 2) == 24
    assert round_requests(49, 3, 1, 2) == 25  # rounded up: the row gets at least its requests
    assert round_requests(1, 1, 1, 4) == 1
