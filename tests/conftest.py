"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Runs a test on one torch thread, then restores the count.

    Tiny models run fastest on one thread, and two threads on a loaded 2-core machine can stall for
    minutes in OpenMP barriers (measured: 0.5 s -> 300 s for a 3-epoch digits fit). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
