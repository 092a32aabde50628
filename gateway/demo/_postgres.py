"""A local PostgreSQL cluster for the demo fleet and the tests: the machine's
own server binaries (Debian's package), ``initdb`` in a directory of ours, a
Unix socket there and no TCP listener at all. Run as the unprivileged
``postgres`` user when we are root, since the server refuses root.

Not for production: authentication is ``trust`` on a socket only its owner
and root can reach; the fleet's operators run PostgreSQL their own way
(docs/operations.md).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg

USER = "gateway"


class PostgresMissing(RuntimeError):
    pass


def server_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl`` (newest version first)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresMissing(
            "no PostgreSQL server binaries (initdb): `make demo-fleet` and `make test` install "
            "Debian's postgresql package; or run `apt-get install postgresql`")
    return Path(initdb).resolve().parent


class LocalCluster:
    """A cluster in ``root`` (created on first start, reused after), its
    socket in ``root`` too. ``durable=False`` turns fsync off (tests)."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.bin = server_bin()
        self.root = root.resolve()
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.durable = durable
        self._as: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            # The server refuses to run as root: its directory belongs to the
            # postgres user, which must also reach it through the parents.
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
            for parent in self.root.parents:
                if parent.stat().st_mode & 0o001 == 0:
                    raise PostgresMissing(f"{parent} is not searchable by the postgres user; "
                                          "put the work directory elsewhere")

    def _run(self, *args: str) -> None:
        # The machine's own PostgreSQL binaries, with arguments of ours.
        subprocess.run([*self._as, *args], check=True, capture_output=True,  # noqa: S603
                       text=True)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> LocalCluster:
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                      "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses='' -k {self.socket_dir} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}"

    def database(self, name: str) -> str:
        """The URL of database ``name``, created if it is not there."""
        with psycopg.connect(self.url(), autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                          (name,)).fetchone() is None:
                db.execute(f"CREATE DATABASE {name}")  # our own identifier
        return self.url(name)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        return self.database("t_" + uuid.uuid4().hex[:12])

    def stop(self, *, mode: str = "fast") -> None:
        if self.running:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
