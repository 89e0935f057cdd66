"""Fixtures for the GraphQL fuzzing of the `--demo` gateway (see test_graphql_fuzz.py).

`gateway` (session): starts `checkout-gateway --demo` on a free 127.0.0.1 port, waits for
/readyz, yields its base URL and stops it at the end. The binary is $CHECKOUT_GATEWAY_BIN, or
target/debug/checkout-gateway at the repository root (`cargo build` first).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STATS_KEY = pytest.StashKey["FuzzStats"]()

# Settings for the demo gateway under fuzzing: upstream timeouts short (the demo's slow fixtures
# wait for them), no retries, no provider quotas, and a short circuit-breaker cooldown so that
# the breaker's open / half-open / closed transitions are exercised during the run too.
GATEWAY_ENV = {
    "GATEWAY_SHUTDOWN_DELAY": "0s",
    "LOG_FORMAT": "json",
    "GATEWAY_UPSTREAM_TIMEOUT": "300ms",
    "GATEWAY_LOOKUP_DEADLINE": "1s",
    "GATEWAY_UPSTREAM_RETRIES": "0",
    "GATEWAY_UPSTREAM_RATE_LIMIT": "off",
    "GATEWAY_BREAKER_COOLDOWN": "2s",
}


@dataclass
class Gateway:
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class FuzzStats:
    """The GraphQL operations really sent to the gateway (every call, shrinking included)."""

    seed: int | None = None  # schemathesis' seed (FUZZ_SEED=<it> replays the run's inputs)
    total: int = 0
    by_operation: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)  # top-level errors' extensions.code
    gateway_log: Path | None = None

    def record(self, operation: str, status: int) -> None:
        self.total += 1
        self.by_operation[operation] += 1
        self.by_status[status] += 1

    def record_errors(self, errors) -> None:
        for error in errors if isinstance(errors, list) else []:
            extensions = error.get("extensions") if isinstance(error, dict) else None
            code = extensions.get("code") if isinstance(extensions, dict) else None
            self.error_codes[str(code) if code is not None else "(no code)"] += 1


def _free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the OS picks it; released for the child)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _binary() -> Path:
    explicit = os.environ.get("CHECKOUT_GATEWAY_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "debug" / "checkout-gateway"
    if not path.is_file():
        pytest.exit(
            f"checkout-gateway binary not found at {path}: run `cargo build --locked --bin "
            f"checkout-gateway` in {REPO}, or set CHECKOUT_GATEWAY_BIN",
            returncode=2,
        )
    return path


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, fuzz_stats: FuzzStats):
    binary = _binary()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # pytest keeps the last few runs' temporary directories (/tmp/pytest-of-<user>/).
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    fuzz_stats.gateway_log = log_path
    env = {**os.environ, **GATEWAY_ENV, "GATEWAY_LISTEN": f"127.0.0.1:{port}"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(binary), "--demo"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    gw = Gateway(url=url, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.exit(
                    f"checkout-gateway --demo exited with {process.returncode} before it was ready; "
                    f"its output:\n{gw.log_tail()}",
                    returncode=1,
                )
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.exit(
                    f"checkout-gateway --demo was not ready on {url}/readyz within "
                    f"{READY_TIMEOUT_S:.0f}s; its output:\n{gw.log_tail()}",
                    returncode=1,
                )
            time.sleep(0.1)
        yield gw
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def http_session():
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="session")
def fuzz_stats(request: pytest.FixtureRequest) -> FuzzStats:
    return request.config.stash.setdefault(STATS_KEY, FuzzStats())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = config.stash.get(STATS_KEY, None)
    if stats is None:
        return
    per_operation = ", ".join(f"{name} {n}" for name, n in sorted(stats.by_operation.items()))
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(stats.by_status.items()))
    codes = ", ".join(f"{code} {n}" for code, n in stats.error_codes.most_common())
    terminalreporter.write_line(
        f"graphql fuzz: {stats.total} operations sent ({per_operation}); HTTP statuses "
        f"{statuses or 'none'}; GraphQL errors by code: {codes or 'none'}; "
        f"seed {stats.seed} (FUZZ_SEED); gateway log {stats.gateway_log}"
    )
