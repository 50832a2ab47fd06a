"""`tuneserve up` for real: Redis, a Celery worker and the API start, and SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.embedded_redis import free_port, ping

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
    pytest.mark.slow,  # real process trees: in the default suite, not in `-m fast`
]

START_TIMEOUT = 90.0


@dataclass
class Proc:
    pid: int
    ppid: int
    state: str
    cmdline: str


def _processes() -> dict[int, Proc]:
    procs: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        procs[int(entry.name)] = Proc(int(entry.name), int(fields[1]), fields[0], cmdline)
    return procs


def _descendants(root: int) -> list[Proc]:
    procs = _processes()
    found: list[Proc] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for proc in procs.values():
            if proc.ppid == parent:
                found.append(proc)
                frontier.append(proc.pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _report(out: Path, data_dir: Path) -> str:
    parts = [f"--- tuneserve up output\n{out.read_text(errors='replace')}"]
    for log in sorted((data_dir / "logs").glob("*.log")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        parts.append(f"--- {log.name}\n{tail}")
    return "\n".join(parts)


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    out: Path

    def report(self) -> str:
        return _report(self.out, self.data_dir)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`tuneserve up` on a temp data dir and a free port; killed (group and all) if a test fails."""
    data_dir, out, port = tmp_path / "data", tmp_path / "up.out", free_port()
    argv = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir)]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Up(proc, port, data_dir, out)
    finally:
        if proc.poll() is None:
            # `up` dying takes its children along (parent-death signal).
            proc.kill()
            proc.wait()


def _wait_healthy(up: Up) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while _http_status(f"http://127.0.0.1:{up.port}/healthz") != 200:
        if up.proc.poll() is not None:
            pytest.fail(f"`tuneserve up` exited with {up.proc.returncode}\n{up.report()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the API did not become healthy in {START_TIMEOUT}s\n{up.report()}")
        time.sleep(0.2)


def _wait_banner(up: Up) -> str:
    """The redis URL printed once `up` has seen every service ready."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        match = re.search(r"redis\s+(redis://\S+)", up.out.read_text(errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.1)
    pytest.fail(f"`tuneserve up` printed no banner\n{up.report()}")


def test_up_runs_redis_worker_and_api_and_sigterm_stops_all(up: Up) -> None:
    _wait_healthy(up)
    redis_url = _wait_banner(up)
    assert ping(redis_url)

    children = _descendants(up.proc.pid)
    commands = [c.cmdline for c in children]
    assert any("redis-server" in c for c in commands), commands
    assert any("celery" in c and " worker" in c for c in commands), commands
    assert any("app.cli api" in c for c in commands), commands
    assert (up.data_dir / "redis" / "appendonly.aof").exists() or (
        up.data_dir / "redis" / "appendonlydir"
    ).exists()
    assert (up.data_dir / "tuneserve.db").exists()
    for name in ("redis", "worker", "api"):
        assert (up.data_dir / "logs" / f"{name}.log").exists()

    up.proc.send_signal(signal.SIGTERM)
    try:
        code = up.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`tuneserve up` did not stop within 45s of SIGTERM\n{up.report()}")
    assert code == 0, up.report()
    leftovers = [c for c in children if _alive(c.pid)]
    assert leftovers == [], leftovers
    assert not _port_open(up.port)
    assert not ping(redis_url)
    assert "Redis is now ready to exit" in (up.data_dir / "logs" / "redis.log").read_text()


def test_up_stops_the_rest_when_a_child_dies(up: Up) -> None:
    _wait_healthy(up)
    children = _descendants(up.proc.pid)
    worker = next(c for c in children if c.ppid == up.proc.pid and "worker" in c.cmdline)
    os.kill(worker.pid, signal.SIGKILL)

    try:
        code = up.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`tuneserve up` kept running after its worker died\n{up.report()}")
    assert code != 0
    assert "worker exited unexpectedly" in up.out.read_text()
    time.sleep(0.5)  # orphans re-parented to init are reaped asynchronously
    leftovers = [c for c in children if _alive(c.pid)]
    assert leftovers == [], leftovers
    assert not _port_open(up.port)


# --- commands that use an existing database ---------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_DB_COMMANDS = [
    ["keys", "list"],
    ["keys", "create", "--scope", "admin"],
    ["keys", "revoke", "key_0"],
    ["api", "--port", "0"],
    ["worker"],
    ["relay"],
]


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `tuneserve` in `cwd`, with no TUNESERVE_ variables but those given."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env=_env() | {"PYTHONPATH": pythonpath} | env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, shown
    return result.stderr.strip()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory, as a user's home would be."""
    cwd = (tmp_path / "elsewhere").resolve()
    cwd.mkdir()
    return cwd


@pytest.mark.parametrize(
    "args", NO_DB_COMMANDS, ids=lambda a: " ".join(a[: 2 if a[0] == "keys" else 1])
)
def test_commands_without_a_database_say_where_they_looked_and_create_nothing(
    elsewhere: Path, args: list[str]
) -> None:
    message = _one_line_failure(_cli(elsewhere, *args))
    assert str(elsewhere / "tuneserve-data" / "tuneserve.db") in message
    assert "--data-dir" in message and "TUNESERVE_DATA_DIR" in message
    assert list(elsewhere.iterdir()) == []


def test_data_dir_and_its_env_variable_reach_a_database_made_elsewhere(
    tmp_path: Path, elsewhere: Path
) -> None:
    data_dir = (tmp_path / "data").resolve()
    migrated = _cli(tmp_path, "migrate", "--data-dir", str(data_dir))
    assert migrated.returncode == 0, migrated.stderr
    assert (data_dir / "tuneserve.db").is_file()

    made = _cli(elsewhere, "keys", "create", "--scope", "admin", "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.split()[1]
    listed = _cli(elsewhere, "keys", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0 and key_id in listed.stdout, listed.stderr
    listed = _cli(elsewhere, "keys", "list", TUNESERVE_DATA_DIR=str(data_dir))
    assert listed.returncode == 0 and key_id in listed.stdout, listed.stderr
    revoked = _cli(elsewhere, "keys", "revoke", key_id, TUNESERVE_DATA_DIR=str(data_dir))
    assert revoked.returncode == 0, revoked.stderr

    missing = elsewhere / "typo"
    message = _one_line_failure(_cli(elsewhere, "keys", "list", "--data-dir", str(missing)))
    assert str(missing / "tuneserve.db") in message
    assert list(elsewhere.iterdir()) == []


def test_a_database_file_without_the_schema_is_named_with_the_fix(elsewhere: Path) -> None:
    (elsewhere / "tuneserve.db").touch()
    message = _one_line_failure(_cli(elsewhere, "keys", "list", "--data-dir", "."))
    assert "tuneserve migrate" in message and str(elsewhere / "tuneserve.db") in message
    assert [p.name for p in elsewhere.iterdir()] == ["tuneserve.db"]


@pytest.mark.parametrize("args", [["keys", "list"], ["migrate"]], ids=" ".join)
def test_an_unreachable_postgres_is_one_line(elsewhere: Path, args: list[str]) -> None:
    url = f"postgresql+psycopg://tuneserve:s3cret-pw@127.0.0.1:{free_port()}/tuneserve"
    message = _one_line_failure(_cli(elsewhere, *args, TUNESERVE_DATABASE_URL=url))
    assert "cannot reach the database" in message and "TUNESERVE_DATABASE_URL" in message
    assert "s3cret-pw" not in message and "127.0.0.1" in message
    assert list(elsewhere.iterdir()) == []
