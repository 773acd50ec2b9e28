"""Shared pytest options for every test tier."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="long modes: ten times the fuzz cases, a two-minute soak",
    )
