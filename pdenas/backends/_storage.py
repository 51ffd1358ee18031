"""Optuna storages by URL and the lock that serialises the budget bookkeeping of workers.

``PDENAS_HEARTBEAT_INTERVAL`` and ``PDENAS_GRACE_PERIOD`` (seconds, read at import) set how often
a running trial beats and how long a silent one lives before it is failed and retried.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

__all__ = ["GRACE_PERIOD", "HEARTBEAT_INTERVAL", "budget_lock", "make_storage"]

HEARTBEAT_INTERVAL = int(os.environ.get("PDENAS_HEARTBEAT_INTERVAL", "10"))
"""Seconds between two heartbeats of a running trial (RDB storages)."""
GRACE_PERIOD = int(os.environ.get("PDENAS_GRACE_PERIOD", "40"))
"""Seconds without a heartbeat after which a trial counts as dead and is retried."""


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: an RDB URL, or ``journal:PATH`` / a ``.log`` file path.

    RDB storages get a heartbeat, so trials of a dead worker are failed and retried.
    """
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url.removeprefix("journal:").removeprefix("//")
        from optuna.storages.journal import JournalFileBackend

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ValueError(
            f"storage: {url!r} is not a storage URL; use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, or journal:/path/study.log"
        )
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3
                ),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        except ImportError as error:
            raise ValueError(f"storage: the driver for {url.split(':')[0]} is missing ({error}); "
                             "for PostgreSQL install pdenas[postgres]") from None
        except Exception as error:  # sqlalchemy.exc.OperationalError and friends
            # Workers that open a fresh database at the same moment race on creating Optuna's
            # tables and all but one fail: the tables exist on the next try.
            if attempt == 2:
                raise ValueError(f"storage: cannot open {url}: {str(error).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def budget_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Serialises the budget bookkeeping of the workers that share a study.

    Counting the budget and asking for the next trial (``claim_trial``), and failing a dead worker's
    trial and queueing its retry, must not interleave between workers, or a study would get more
    trials than asked for. PostgreSQL and MySQL use an advisory lock named after the study;
    SQLite and journal files a file lock beside them; other storages are not locked.
    """
    scheme = storage_url.partition(":")[0].split("+")[0]
    if scheme in ("postgresql", "postgres", "mysql", "mariadb"):
        import hashlib

        import sqlalchemy
        from sqlalchemy.pool import NullPool

        key = int.from_bytes(hashlib.sha1(f"pdenas:{study_name}".encode()).digest()[:8], "big",
                             signed=True)
        postgres = scheme.startswith("postgres")
        lock, unlock = (("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
                        if postgres else
                        ("SELECT GET_LOCK(:name, 600)", "SELECT RELEASE_LOCK(:name)"))
        args = {"key": key} if postgres else {"name": f"pdenas-{key:x}"[:64]}
        engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(lock), args)
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text(unlock), args)
        finally:
            engine.dispose()
        return
    path = None
    if scheme == "sqlite":
        database = storage_url.partition(":///")[2]
        path = database if database and database != ":memory:" else None
    elif storage_url.startswith("journal:") or storage_url.endswith((".log", ".journal")):
        path = storage_url.removeprefix("journal:").removeprefix("//")
    if path is None:
        yield
        return
    import fcntl

    with open(f"{path}.pdenas-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
