"""Shared settings for the AWM maths tests (CPU, single thread: the CI box has 2 shared cores)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
