"""Optuna storages by URL and the lock that serialises the budget bookkeeping of workers.

``PDENAS_HEARTBEAT_INTERVAL`` and ``PDENAS_GRACE_PERIOD`` (whole seconds, read when a storage is
opened: ``heartbeat_settings``) set how often a running trial beats and how long a silent one lives
before it is failed and retried; the grace period must exceed the interval. ``PDENAS_LOCK_TIMEOUT``
(seconds, default 300) bounds the wait for the budget lock of a PostgreSQL or MySQL study.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import optuna

from pdenas.errors import InputError

__all__ = ["MAX_RETRY", "budget_lock", "check_storage_url", "heartbeat_settings",
           "lock_timeout", "make_storage", "redact_url"]

MAX_RETRY = 1
"""Copies queued of a trial whose worker died: a candidate that kills its worker twice (the OOM
killer, a crash in a kernel) is recorded as failed instead of killing every worker in turn."""
_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/\s]*@")
SQLITE_BUSY_TIMEOUT = 60.0
"""Seconds a SQLite connection waits for another worker's write lock before it fails."""
LOCK_HOLD_SECONDS = 60
"""PostgreSQL ends the budget lock's session after this long idle, so a vanished holder frees it."""


def _env_seconds(name: str, default: int, minimum: int = 1) -> int:
    """A whole number of seconds from the environment; a bad value is one line naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise InputError(f"{name}: got {text!r}; allowed: a whole number of seconds >= {minimum}")
    return value


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds from ``PDENAS_HEARTBEAT_INTERVAL`` (default
    10) and ``PDENAS_GRACE_PERIOD`` (default 40).

    Raises:
        ValueError: A value that is not a whole number >= 1, or a grace period not longer than
            the interval (every live trial would look dead), naming the variable.
    """
    interval = _env_seconds("PDENAS_HEARTBEAT_INTERVAL", 10)
    grace = _env_seconds("PDENAS_GRACE_PERIOD", 40)
    if grace <= interval:
        raise InputError(f"PDENAS_GRACE_PERIOD: got {grace}; allowed: more seconds than "
                         f"PDENAS_HEARTBEAT_INTERVAL ({interval}), best several times it")
    return interval, grace


def lock_timeout() -> int:
    """Seconds a worker waits for the budget lock (``PDENAS_LOCK_TIMEOUT``, default 300)."""
    return _env_seconds("PDENAS_LOCK_TIMEOUT", 300)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) with every URL password replaced by ``***``
    (for run.json, logs and errors)."""
    return _PASSWORD.sub(r"\1:***@", text)


def check_storage_url(url: str) -> None:
    """Refuses, before anything runs, a storage URL that would keep nothing.

    Raises:
        ValueError: Not a URL or a journal path, or an in-memory SQLite database.
    """
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        return
    if "://" not in url:
        raise InputError(
            f"storage: {redact_url(url)!r} is not a storage URL; use e.g. sqlite:///study.db, "
            "postgresql://user@host/db, or journal:/path/study.log"
        )
    if url.startswith("sqlite") and url.partition(":///")[2] in ("", ":memory:"):
        raise InputError(f"storage: {url!r} is an in-memory database and would keep nothing; "
                         "allowed: a file, e.g. sqlite:///study.db")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: an RDB URL, or ``journal:PATH`` / a ``.log`` file path.

    RDB storages get a heartbeat, so trials of a dead worker are failed and retried.
    """
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url.removeprefix("journal:").removeprefix("//")
        from optuna.storages.journal import JournalFileBackend

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    check_storage_url(url)
    interval, grace = heartbeat_settings()
    engine = ({"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}} if url.startswith("sqlite")
              else {"pool_pre_ping": True, "connect_args": _connect_args(url)})
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
                engine_kwargs=engine,
            )
        except ImportError as error:
            raise InputError(f"storage: the driver for {url.split(':')[0]} is missing ({error}); "
                             "for PostgreSQL install pdenas[postgres]") from None
        except Exception as error:  # sqlalchemy.exc.OperationalError and friends
            # Workers that open a fresh database at the same moment race on creating Optuna's
            # tables and all but one fail: the tables exist on the next try.
            if attempt == 2:
                raise InputError(f"storage: cannot open {redact_url(url)}: "
                                 f"{redact_url(str(error).splitlines()[0])}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _connect_args(url: str) -> dict[str, int]:
    """Driver arguments that bound how long opening a connection may hang (10 s)."""
    scheme = url.partition(":")[0]
    if scheme.startswith("postgres"):
        return {"connect_timeout": 10}
    if scheme.startswith(("mysql", "mariadb")):
        return {"connect_timeout": 10}
    return {}


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
        args = {"key": key} if postgres else {"name": f"pdenas-{key:x}"[:64]}
        url = storage_url
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=_connect_args(url))
        unlock = "SELECT pg_advisory_unlock(:key)" if postgres else "SELECT RELEASE_LOCK(:name)"
        try:
            connection = engine.connect()
            try:
                _acquire(connection, postgres, args, study_name)
            except BaseException as error:
                connection.close()
                if isinstance(error, sqlalchemy.exc.DBAPIError):
                    raise InputError(f"storage: the budget lock of {study_name!r} failed: "
                                     f"{redact_url(str(error.orig).splitlines()[0])}") from None
                raise
            try:
                yield
            finally:
                # A holder paused past LOCK_HOLD_SECONDS lost its session (and the lock) already.
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                    connection.execute(sqlalchemy.text(unlock), args)
                    connection.commit()
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                    connection.close()
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


def _acquire(connection, postgres: bool, args: dict[str, object], study_name: str) -> None:
    """Takes the study's advisory lock on ``connection`` within ``lock_timeout()`` seconds.

    PostgreSQL: ``pg_try_advisory_lock`` polled until the deadline, on a session that the server
    ends after ``LOCK_HOLD_SECONDS`` idle (so a holder that vanished, or is paused, frees the lock
    without waiting hours for TCP keepalive). MySQL: ``GET_LOCK`` with the timeout, its result
    checked (0: timed out, NULL: an error).

    Raises:
        ValueError: The lock was not obtained in time (one line naming the study).
    """
    import sqlalchemy

    timeout = lock_timeout()
    text = sqlalchemy.text
    if postgres:
        for setting in (f"SET idle_session_timeout = {LOCK_HOLD_SECONDS * 1000}",  # PG >= 14
                        "SET lock_timeout = 10000", "SET statement_timeout = 30000"):
            try:
                connection.execute(text(setting))
                connection.commit()
            except sqlalchemy.exc.DBAPIError:
                connection.rollback()
        deadline = time.monotonic() + timeout
        while True:
            if connection.execute(text("SELECT pg_try_advisory_lock(:key)"), args).scalar():
                connection.commit()
                return
            connection.commit()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    else:
        got = connection.execute(text(f"SELECT GET_LOCK(:name, {timeout})"), args).scalar()
        if got == 1:
            return
        if got is None:
            raise InputError(f"storage: MySQL GET_LOCK failed for the budget lock of {study_name!r}")
    raise InputError(f"storage: the budget lock of {study_name!r} was not free within {timeout} s "
                     "(PDENAS_LOCK_TIMEOUT); another worker holds it and does not let go")
