"""Fixtures shared by several test modules (opt-in: a module asks for them with pytestmark)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The test machines are shared 2-core boxes: two torch threads contending with other jobs run ~20x slower.

    Modules that train or encode use it with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(session, config, items):
    """The container tests last: scripts/test.sh builds their images in the background meanwhile (tests/docker_build.py)."""
    items.sort(key=lambda item: item.path.name == "test_docker_e2e.py")  # stable: every other order is kept
