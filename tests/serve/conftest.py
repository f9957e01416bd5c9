"""The serve tests' own setting: every ``RetrieverCore.load`` of mUSE gets the session's encoder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _retriever_cores_share_the_session_muse(muse):
    """``RetrieverCore.load`` builds its encoder with ``load_encoder``; for ``"muse"`` with one BLAS
    thread (its default) hand it the session's loaded encoder (tests/conftest.py) instead of a fresh
    one that loads the model again (about 2 s a core). Every other spec loads as before. Module
    scope, so the patch is on before this folder's module fixtures (demo_core) and off after it."""
    import ray_cora.serve.core as core

    load_encoder = core.load_encoder

    def load(spec, *, threads=1, **options):
        if spec.strip() == "muse" and threads == 1:
            return muse
        return load_encoder(spec, threads=threads, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "load_encoder", load)
        yield


@pytest.fixture(scope="module", autouse=True)
def _serve_in_throughput_optimized_mode():
    """The Serve tests run Ray as ``ray-cora serve`` starts it by default: with Ray Serve's
    throughput-optimized mode (``serve_environment``). Module scope and autouse, so it is set before
    the module's Ray (tests/conftest.py ray_local) starts and is read by its Serve processes."""
    from ray_cora.configs.serve import ServeConfig
    from ray_cora.serve.run import serve_environment

    with pytest.MonkeyPatch.context() as patch:
        for name, value in serve_environment(ServeConfig(), ray_running=False).items():
            patch.setenv(name, value)
        yield
