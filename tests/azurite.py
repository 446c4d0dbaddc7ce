"""A real Azurite (Azure Blob emulator) for tests.

A test module gets the shared session fixture ``azurite`` with::

    from tests.azurite import azurite as azurite_fixture  # noqa: F401

(the alias keeps ruff from flagging test parameters named ``azurite``; the fixture keeps its name).
Tests that stop or restart the server make their own :class:`AzuriteServer`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AZURITE_BLOB = REPO / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published development account (https://learn.microsoft.com/azure/storage/common/storage-use-azurite)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AzuriteServer:
    """One azurite-blob process on 127.0.0.1; restarts keep its port and data directory."""

    def __init__(self, location: Path, port: int | None = None) -> None:
        if not AZURITE_BLOB.exists():
            raise FileNotFoundError(
                f"Azurite is not installed ({AZURITE_BLOB} is missing): run scripts/setup.sh --test"
            )
        self.location = Path(location)
        self.location.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.location.parent / f"azurite-{self.port}.log"
        self._proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Launch the server and wait until its port accepts connections."""
        if self.running:
            return
        command = [
            str(AZURITE_BLOB),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(self.location),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"azurite exited with code {self._proc.returncode}: {self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite did not listen on port {self.port} in {timeout} s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM lets Azurite save its metadata), killing after 10 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> AzuriteServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session", name="azurite")
def azurite(tmp_path_factory) -> Iterator[AzuriteServer]:
    """The session's shared Azurite server."""
    try:
        server = AzuriteServer(tmp_path_factory.mktemp("azurite") / "data")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server
