"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Gives the suite a terminal's Ctrl-C even when it was started with SIGINT ignored.

    A shell without job control starts a background command (``pytest ... &``, ``nohup``
    scripts) with SIGINT ignored; Python then installs no KeyboardInterrupt handler, and the
    tests of pdenas's Ctrl-C handling, in this process and in the children it starts (a caught
    signal is reset to the default on exec, an ignored one stays ignored), would test that
    setting instead. pdenas itself leaves an ignored SIGINT ignored, as a user who ignores it
    wants.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Two timed forward passes per latency, not ten: the tests read latencies, never compare
    # them closely (the study key became PDENAS_LATENCY_REPEATS; children inherit it).
    os.environ.setdefault("PDENAS_LATENCY_REPEATS", "2")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each pytest-xdist worker (one per core) trains on one thread, and so do the processes
        # it starts: one torch thread per core in every worker would put two threads on each
        # core, where OpenMP's waiting threads stall one another for minutes.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def is_ray_test(nodeid: str) -> bool:
    """Whether a test belongs to the Ray group of ``pytest_xdist_make_scheduler``: its id says
    "ray" (the collection hook below holds every Ray test to that)."""
    return "ray" in nodeid.lower()


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist (``-n auto`` in ``pyproject.toml``) hands out the tests in units: every Ray
    test in one (they share one local Ray runtime, and a second runtime of 2 CPUs beside it on a
    2-core machine would starve the time-budget tests), and every other test with its module, so
    that a module's fixtures (a search run once for all its tests) are built once.

    By the test's id, because the controller sees ids only: xdist's own ``--dist loadgroup``
    marks do not reach it under pytest 9.2 (xdist 3.8 suffixes ``item._nodeid``, which pytest
    no longer reads), which ran the Ray tests on both workers."""
    from xdist.scheduler import LoadScopeScheduling

    class ByServiceOrModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if is_ray_test(nodeid) else nodeid.split("::", 1)[0]

    return ByServiceOrModule(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses Ray (its mark or the ``ray_address`` runtime) says so in its id, so
    that the scheduler above keeps it in the Ray group."""
    for item in items:
        uses_ray = item.get_closest_marker("ray") or "ray_address" in getattr(item, "fixturenames", ())
        if uses_ray and not is_ray_test(item.nodeid):
            raise pytest.UsageError(f"{item.nodeid}: uses Ray but its name does not say 'ray' "
                                    "(tests/conftest.py groups the Ray tests by name)")


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


# --- services: PostgreSQL and Ray (under CI a missing one fails the test instead of skipping) ---
def missing_service(message: str) -> None:
    """Skips the calling test, or fails it under CI (``CI=true``), where every service must run."""
    import os

    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI must run this test)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database URL: ``PDENAS_TEST_POSTGRES_URL`` when set, else a throwaway server on
    127.0.0.1 (initdb into a temp folder, run as the postgres user when root) for the session."""
    import os

    if url := os.environ.get("PDENAS_TEST_POSTGRES_URL"):
        yield url
        return
    try:
        import psycopg  # noqa: F401  (psycopg 3, the driver pdenas[postgres] installs)
    except ImportError:
        missing_service("psycopg (3) is not installed (pip install -e '.[postgres]')")
    from pg_server import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        missing_service("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.start()
    except (RuntimeError, OSError) as error:
        server.stop()
        missing_service(f"cannot start PostgreSQL: {error}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A local Ray runtime for the session (2 CPUs, no dashboard); yields its GCS address, which
    other driver processes can join with ``--address``."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        missing_service("ray[tune] is not installed (pip install -e '.[ray]')")
    import logging

    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                       log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


TINY_SPACE = """\
description: Two families, tiny nets; the learning rate is either useless or good.
families: [parabolic, resnet]
num_units: 2
depth: 1
width: {base: 16, growth: 1, last: same}
step_size: {low: 0.2, high: 1.0, log: true}
norm: batch
train:
  optimizer: adamw
  lr: [1.0e-5, 1.0e-2]
"""


@pytest.fixture
def tiny_study(tmp_path):
    """Writes a seconds-per-trial study on 8x8 digits (and its search space) to ``tmp_path``.

    Call it with keyword overrides of the study's top-level keys; returns the study file's path.
    """
    import uuid

    import yaml

    def write(**overrides: object):
        (tmp_path / "tiny_space.yaml").write_text(TINY_SPACE)
        study = {
            "name": f"tiny-{uuid.uuid4().hex[:8]}",
            "data": {"name": "digits", "train_limit": 800},
            "space": "tiny_space.yaml",
            "train": {"epochs": 2, "batch_size": 32, "augment": False},
            "objectives": ["val_accuracy"],
            "sampler": {"name": "random"},
            "early_stop": "none",
            "n_trials": 4,
            "device": "cpu",
            "seed": 6,
            **overrides,
        }
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        return path

    return write


def search_quietly(folder, files: dict[str, str], study: str):
    """Writes ``files`` (name -> text) into ``folder``, runs ``pdenas search STUDY --out
    folder/run --quiet`` in this process on one torch thread, and returns the run folder."""
    from pdenas.cli import main

    for name, text in files.items():
        (folder / name).write_text(text)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["search", str(folder / study), "--out", str(folder / "run"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "run"
