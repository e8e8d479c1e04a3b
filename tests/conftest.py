"""Hooks and fixtures only, so that pytest's own process loads no torch; what the tests share is in helpers.py."""
import os

import pytest

SDE_NAMES = ("cosine", "rf", "subvp", "user_vp", "ve", "vp")  # helpers.ALL_SDES
pytest.register_assert_rewrite("helpers")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)  # one thread per test process: the workers share the cores


@pytest.fixture(params=SDE_NAMES)
def any_sde(request):
    from helpers import ALL_SDES

    return ALL_SDES[request.param]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that share a module- or session-scoped fixture run in one xdist group (setup.cfg: --dist
    loadgroup), so that one worker builds the fixture once; the modules that hold slow tests run first (each
    module's tests together, in their order), so that no long test is left for one worker to run alone at the
    end."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        for name in getattr(item, "fixturenames", ()):
            last = defs[name][-1] if name in defs else None
            if last is not None and last.scope in ("module", "session") and \
                    os.path.dirname(os.path.abspath(last.func.__code__.co_filename)) == here:
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
                break
