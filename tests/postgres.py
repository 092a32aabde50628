"""A throwaway PostgreSQL cluster for the tests: the demo's local cluster
(gateway/demo/_postgres.py: the machine's own server binaries, a Unix socket
and no TCP listener; `make test` installs Debian's package when missing) in
a temporary directory, with fsync off (nothing here must survive a crash)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gateway.demo._postgres import USER, LocalCluster, server_bin

__all__ = ["USER", "Cluster", "server_bin"]


class Cluster(LocalCluster):
    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        super().__init__(root, durable=False)

    def start(self) -> Cluster:
        super().start()
        return self

    def stop_server(self) -> None:
        """Stop the server, keep its files (start() brings it back)."""
        super().stop(mode="fast")

    def stop(self, *, mode: str = "immediate") -> None:
        try:
            super().stop(mode=mode)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
