"""Run the shared conformance suite (tests/benchmarks/conformance.py) on every registered benchmark."""

from __future__ import annotations

import pytest

from benchmarks.registry import list_benchmarks
from tests.benchmarks.conformance import CHECKS, Kit, load_testing

HOOKS = ("make_test_benchmark", "make_unavailable_benchmark", "sample_inputs", "malformed_metadata")


@pytest.mark.parametrize("name", list_benchmarks())
def test_testing_hooks_present(name):
    mod = load_testing(name)
    missing = [h for h in HOOKS if not callable(getattr(mod, h, None))]
    assert not missing, f"benchmarks/{name}/testing.py lacks {missing}"


@pytest.fixture(scope="module", params=list_benchmarks())
def kit(request, tmp_path_factory):
    name = request.param
    try:
        testing = load_testing(name)
    except ImportError as e:
        pytest.fail(f"benchmarks/{name}/testing.py cannot be imported: {e}")
    tmp = tmp_path_factory.mktemp(f"conformance-{name}")
    bench = testing.make_test_benchmark(tmp)
    yield Kit(name=name, testing=testing, bench=bench, tmp_path=tmp)
    bench.close()


@pytest.mark.parametrize("check", list(CHECKS))
def test_conformance(kit, check):
    CHECKS[check](kit)
