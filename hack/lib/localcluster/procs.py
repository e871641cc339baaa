"""Starting, watching and stopping the cluster's own processes, and failing legibly.

A failure ends with one line that says what and where, plus the tail of that component's log: never a
Python stack trace (``ClusterError`` is caught in ``main``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from localcluster.config import Paths


class ClusterError(Exception):
    """A step of the local cluster failed; ``log`` is the file whose tail explains it."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def run(
    cmd: Sequence[str | Path],
    *,
    what: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise ClusterError naming ``what`` with its output's tail."""
    args = [str(c) for c in cmd]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ClusterError(f"{what}: command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what}: timed out after {timeout:.0f} s: {' '.join(args)}", log) from exc
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise ClusterError(f"{what}: exit {proc.returncode}: {' '.join(args)}\n" + "\n".join(output), log)
    return proc


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def start_daemon(
    paths: Paths, component: str, cmd: Sequence[str | Path], env: dict[str, str] | None = None
) -> int:
    """Start a long-running component in its own session, detached from this process; record its PID."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    log = paths.logfile(component)
    with log.open("ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdin=devnull,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    paths.pidfile(component).write_text(str(proc.pid))
    return proc.pid


def wait_until(
    component: str,
    ready: Callable[[], bool],
    *,
    deadline_s: float,
    paths: Paths,
    pid: int | None = None,
    interval: float = 0.25,
) -> float:
    """Poll ``ready`` until true; fail fast when the component died. Returns the seconds waited."""
    start = time.monotonic()
    while True:
        try:
            if ready():
                return time.monotonic() - start
        except Exception:
            pass
        if pid is not None and not alive(pid):
            raise ClusterError(f"{component} exited during start-up", paths.logfile(component))
        if time.monotonic() - start > deadline_s:
            raise ClusterError(f"{component} not ready after {deadline_s:.0f} s", paths.logfile(component))
        time.sleep(interval)


def start_ready(
    paths: Paths,
    component: str,
    cmd: Sequence[str | Path],
    ready: Callable[[], bool],
    *,
    deadline_s: float,
    env: dict[str, str] | None = None,
) -> int:
    """``start_daemon``, then ``wait_until`` it is ``ready`` (failing as soon as it exits); its PID."""
    pid = start_daemon(paths, component, cmd, env=env)
    wait_until(component, ready, deadline_s=deadline_s, paths=paths, pid=pid)
    return pid


def stop_pid(pid: int, *, grace_s: float = 15) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Only for PIDs this tool started (from its pidfiles)."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + 5
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.1)


def stop_component(paths: Paths, component: str, *, grace_s: float = 15) -> bool:
    """Stop a component started by ``start_daemon``; True when one was running."""
    pid = read_pid(paths.pidfile(component))
    paths.pidfile(component).unlink(missing_ok=True)
    if pid is None:
        return False
    stop_pid(pid, grace_s=grace_s)
    return True


def pids_with_cmdline(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a path unique to this cluster, e.g. its containerd
    socket): how containerd's shims, which re-parent away from us, are found and ended."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def report_failures(tool: str, command: str, act: Callable[[], int]) -> int:
    """``act()``'s exit status; a failure is one line and the tail of the log that explains it, never a stack
    trace."""
    try:
        return act()
    except ClusterError as exc:
        print(f"{tool} {command} failed: {exc}", file=sys.stderr)
        detail = tail(exc.log)
        if detail:
            print(f"--- last lines of {exc.log} ---\n{detail}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or device the step needed: one line, not a stack trace
        print(f"{tool} {command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def tier_main(
    prog: str,
    doc: str | None,
    commands: Mapping[str, tuple[str, Callable[[], int | None]]],
    argv: list[str] | None,
) -> int:
    """The command line of an opt-in tier (``hack/keda``, ``hack/argocd``): one subcommand each of
    ``commands`` (name -> (help, what it runs: its exit status, or None for 0)), under ``report_failures``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, _) in commands.items():
        sub.add_parser(name, help=text)
    command: str = parser.parse_args(argv).command
    return report_failures(prog.rpartition("/")[2], command, lambda: commands[command][1]() or 0)
