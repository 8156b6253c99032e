"""Hypothesis profiles: 'ci' (default, quick) and 'thorough' (HYPOTHESIS_PROFILE=thorough);
the GPU fixtures: fake_gpu (the fake CuPy) and gpu (each GPU backend there is)."""
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

import fake_cupy

settings.register_profile("ci", max_examples=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def fake_gpu(monkeypatch):
    """device="gpu" resolves to the strict fake CuPy of tests/fake_cupy.py in this test:
    `import cupy` finds it, as it would find the real one, and the engine does not know.
    -> the fake_cupy module (fake_cupy.cupy, fake_cupy.counting())."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy.cupy)
    return fake_cupy


@pytest.fixture(params=["fake-cupy", "cuda"])
def gpu(request):
    """A test run once per GPU backend: on the fake CuPy always, on a real CuPy with a CUDA
    device where one is (skipped elsewhere). -> the cupy module device="gpu" resolves to."""
    if request.param == "fake-cupy":
        return request.getfixturevalue("fake_gpu").cupy
    from minitransformer.backend import _cupy
    cupy, why = _cupy()
    if cupy is None:
        pytest.skip(f"a real GPU: {why}")
    return cupy
