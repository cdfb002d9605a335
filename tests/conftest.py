"""Shared test set-up: a persistent compilation cache so identical programs compile once per session."""

import pytest

from sphere_rl.compilation_cache import enable_compilation_cache


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    enable_compilation_cache(tmp_path_factory.mktemp("jax-cache"))
