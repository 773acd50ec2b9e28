"""A spawned server stops when its launcher dies (transport.parent_death), armed after exec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from transport.parent_death import PARENT_PID_ENV
from harness.processes import REPO_ROOT, pid_alive
from tests.waiting import eventually

CHILD = (
    "import os, sys, time\n"
    "from transport.parent_death import PARENT_PID_ENV, die_with_parent_from_env\n"
    "die_with_parent_from_env()\n"
    "print('armed', PARENT_PID_ENV in os.environ, flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop(PARENT_PID_ENV, None)
    env.update(extra)
    return env


def _run_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, "0"], env=env, capture_output=True, text=True, timeout=60
    )


def test_unset_is_a_no_op() -> None:
    done = _run_child(_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "armed False"


def test_named_parent_alive_runs_and_the_variable_is_not_inherited() -> None:
    done = _run_child(_env(**{PARENT_PID_ENV: str(os.getpid())}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "armed False"


def test_named_parent_already_gone_stops_at_once() -> None:
    # The named launcher is not this child's parent: it died before the signal was armed.
    done = _run_child(_env(**{PARENT_PID_ENV: "1"}))
    assert done.returncode == -signal.SIGTERM
    assert done.stdout == ""


def test_child_stops_when_its_launcher_dies(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    launcher = (
        "import os, subprocess, sys\n"
        "from transport.parent_death import PARENT_PID_ENV\n"
        "env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})\n"
        f"p = subprocess.Popen([sys.executable, '-c', {CHILD!r}, '120'], env=env, stdout=subprocess.PIPE)\n"
        "assert p.stdout.readline().startswith(b'armed')\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", launcher], env=_env(), check=True, timeout=60)
    child = int(pid_file.read_text())
    try:
        eventually(lambda: not pid_alive(child), "the child to exit after its launcher")
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
