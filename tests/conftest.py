"""Shared pytest fixtures: one emulator process per test session, reset before
each test that asks for it. Used by tests/emulator and tests/integration."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulator"))

from harness import Emulator  # noqa: E402


@pytest.fixture(scope="session")
def emulator_proc(tmp_path_factory):
    """The session's HTTPS emulator (not reset: use `emulator` in tests)."""
    emu = Emulator(str(tmp_path_factory.mktemp("emulator"))).start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator(emulator_proc):
    """The session's emulator, reset to its default seed before the test."""
    emulator_proc.reset()
    return emulator_proc


@pytest.fixture(scope="session")
def emulator_http_proc(tmp_path_factory):
    """A plain-HTTP emulator, started only when a test asks for it."""
    emu = Emulator(str(tmp_path_factory.mktemp("emulator-http")), http=True).start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator_http(emulator_http_proc):
    emulator_http_proc.reset()
    return emulator_http_proc
