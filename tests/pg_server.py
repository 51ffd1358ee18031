"""A throwaway PostgreSQL server on 127.0.0.1 for the multi-worker tests and the scaling benchmark.

Not a test module: ``tests/conftest.py`` and ``benchmarks/scaling.py`` import it. The server runs
as the ``postgres`` user when this process is root (PostgreSQL refuses to run as root), from a
fresh data folder in the system temp folder, with trust authentication on loopback only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "find_bin_dir"]


def find_bin_dir() -> Path | None:
    """The folder of ``pg_ctl`` and ``initdb``: Debian's newest ``/usr/lib/postgresql/*/bin``,
    else wherever ``pg_ctl`` is on PATH; None when PostgreSQL is not installed."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """Starts PostgreSQL in a temporary folder; ``url`` names its database ``pdenas``.

    Use as a context manager, or call ``start`` and ``stop``.
    """

    def __init__(self, bin_dir: Path | None = None, database: str = "pdenas") -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.bin_dir, self.database = found, database
        self.root: Path | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database (trust authentication, user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-500:]}")

    def start(self) -> str:
        """Initialises, starts the server and creates the database; returns ``url``."""
        self.root = Path(tempfile.mkdtemp(prefix="pdenas-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        data = self.root / "data"
        self.port = _free_port()
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "-o", options, "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  self.database)
        return self.url

    def stop(self) -> None:
        """Stops the server and removes its folder."""
        if self.root is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
