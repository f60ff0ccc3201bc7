from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(detector dir, clip dir, root) of the tiny random GenEval models, built once per session."""
    import torch

    from benchmarks.geneval.testing import build_tiny_clip, build_tiny_detector

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("geneval-tiny")
    try:
        yield build_tiny_detector(root / "tiny-mask2former"), build_tiny_clip(root / "tiny-clip"), root
    finally:
        torch.set_num_threads(n)
