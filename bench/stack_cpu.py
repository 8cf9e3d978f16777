"""What the whole `clickflow up` stack costs in CPU: idle (no traffic) and with `--demo`.

Starts `clickflow up` in a private data dir on free ports, waits until it says it is up, lets
it settle, then reads the CPU time of every process under it (the embedded broker, Redis and
PostgreSQL, `serve`, `collect`, `auth`, each `process`, the generator, `up` itself) at the
start and at the end of a window. Prints one table per trial and the total as % of one core.
Goals (issue 23): idle <= 2% of one core, demo <= 10%.

A/B: pass ``--src`` twice (the ``src`` folder of each tree); the trials alternate between them
and the summary gives medians per tree and mode::

    python bench/stack_cpu.py --src OLD/src --label base --src NEW/src --label new \\
        --modes idle demo --trials 3 --write
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from _common import load, machine, today  # noqa: E402

from tests.runtime.up_env import up_env  # noqa: E402

console = Console()


def role(p: psutil.Process) -> str:
    """A stable name for a process of the stack: postgres backends are summed as one."""
    try:
        cmd = p.cmdline()
        name = p.name()
    except psutil.Error:
        return "?"
    if "clickflow" in cmd:
        args = cmd[cmd.index("clickflow") + 1 :]
        words = [a for a in args if not a.startswith("-")]
        if words[:1] == ["process"] and len(words) > 1:
            return f"process {words[1]}"
        return words[0] if words else "clickflow"
    if cmd and "tansu" in Path(cmd[0]).name or name.startswith("tansu") or "broker" in cmd:
        return "kafka (tansu)"
    if name.startswith("redis"):
        return "redis"
    if name.startswith("postgres") or (cmd and "postgres" in Path(cmd[0]).name):
        return "postgres"
    return name


def stack(up: psutil.Process) -> list[psutil.Process]:
    return [up, *up.children(recursive=True)]


def cpu_of(p: psutil.Process) -> tuple[float, float] | None:
    """(its own CPU seconds, those of its children it has reaped)."""
    try:
        t = p.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system, t.children_user + t.children_system


def sample(up: psutil.Process, seconds: float) -> dict[str, float]:
    """CPU seconds per role over ``seconds``.

    A process counts its own CPU from the window's start (or its birth) to the end, plus
    what its reaped children used meanwhile: PostgreSQL forks a backend per connection (a
    health check every few seconds), too short-lived to be seen between two readings. A
    process that ended inside the window is left to its parent's reaped-children count."""
    first: dict[int, tuple[float, float]] = {}
    procs: dict[int, psutil.Process] = {}
    for p in stack(up):
        c = cpu_of(p)
        if c is not None:
            first[p.pid], procs[p.pid] = c, p
    last = dict(first)
    deadline = time.monotonic() + seconds
    while True:
        # Reading every few seconds also catches processes born inside the window.
        time.sleep(max(0.0, min(5.0, deadline - time.monotonic())))
        alive: set[int] = set()
        for p in stack(up):
            c = cpu_of(p)
            if c is not None:
                procs.setdefault(p.pid, p)
                first.setdefault(p.pid, (0.0, 0.0))
                last[p.pid] = c
                alive.add(p.pid)
        if time.monotonic() >= deadline:
            break
    used: dict[str, float] = {}
    for pid, (own0, kids0) in first.items():
        own1, kids1 = last[pid]
        cpu = max(0.0, kids1 - kids0) + (max(0.0, own1 - own0) if pid in alive else 0.0)
        r = role(procs[pid])
        used[r] = used.get(r, 0.0) + cpu
    return used


@dataclass
class Trial:
    src: str
    mode: str
    seconds: float
    used: dict[str, float]

    @property
    def total_pct(self) -> float:
        return 100 * sum(self.used.values()) / self.seconds


def run_trial(src: str | None, demo: bool, seconds: float, settle: float) -> Trial:
    tmp = Path(tempfile.mkdtemp(prefix="clickflow-stackcpu-"))
    env, _ports = up_env(tmp)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())  # `up` runs in its own directory
    log = tmp / "up.log"
    argv = [sys.executable, "-m", "clickflow", "up", *(["--demo"] if demo else [])]
    with log.open("wb") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        timeout = float(env["CLICKFLOW_UP_READY_TIMEOUT_S"]) + 30
        deadline = time.monotonic() + timeout
        while "clickflow is up." not in log.read_text(errors="replace"):
            if up.poll() is not None:
                raise RuntimeError(f"`clickflow up` exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"`clickflow up` not up in {timeout:.0f}s")
            time.sleep(0.5)
        time.sleep(settle)  # migrations, first joins and JIT-like warm-ups are not idle
        used = sample(psutil.Process(up.pid), seconds)
        return Trial(src or "installed", "demo" if demo else "idle", seconds, used)
    finally:
        stop(up)


def stop(up: subprocess.Popen) -> None:
    """SIGTERM to `up` (it stops its services, as on Ctrl-C; SIGINT may be ignored when this
    runs in the background), then anything left is killed."""
    try:
        tree = psutil.Process(up.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def print_trial(t: Trial) -> None:
    table = Table(title=f"{t.mode}, {t.src}, {t.seconds:.0f} s, {load()}")
    table.add_column("process")
    table.add_column("CPU s", justify="right")
    table.add_column("% of one core", justify="right")
    for r, s in sorted(t.used.items(), key=lambda kv: -kv[1]):
        table.add_row(r, f"{s:.2f}", f"{100 * s / t.seconds:.1f}")
    table.add_row("[bold]total", f"{sum(t.used.values()):.2f}", f"[bold]{t.total_pct:.1f}")
    console.print(table)


def summary(trials: list[Trial]) -> str:
    """A markdown table: median % of one core per process, per tree and mode."""
    keys = sorted({(t.src, t.mode) for t in trials}, key=lambda k: (k[1], k[0]))
    roles = sorted({r for t in trials for r in t.used})
    head = "| mode | tree | trials | total | " + " | ".join(roles) + " |"
    lines = [head, "|" + "---|" * (4 + len(roles))]
    for src, mode in keys:
        ts = [t for t in trials if (t.src, t.mode) == (src, mode)]
        cells = [
            f"{statistics.median(100 * t.used.get(r, 0.0) / t.seconds for t in ts):.1f}"
            for r in roles
        ]
        total = statistics.median(t.total_pct for t in ts)
        all_totals = ", ".join(f"{t.total_pct:.1f}" for t in ts)
        lines.append(
            f"| {mode} | {src} | {len(ts)} | **{total:.1f}** ({all_totals}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", help="a tree's src folder (twice for A/B)")
    ap.add_argument("--modes", nargs="+", choices=["idle", "demo"], default=["idle", "demo"])
    ap.add_argument("--trials", type=int, default=1, help="per tree and mode")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after up, unmeasured")
    ap.add_argument(
        "--write", action="store_true", help="append the tables to bench/results/stack_cpu.md"
    )
    ap.add_argument("--label", action="append", help="a name per --src for the tables")
    args = ap.parse_args()

    def _term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    srcs: list[str | None] = list(args.src or [None])
    # Tables name a tree by its label (default: its folder's name), never by its path.
    labels = {s: Path(s).resolve().parent.name for s in srcs if s}
    labels.update(zip(srcs, args.label or [], strict=False))
    for s in srcs:
        if s:
            where = subprocess.run(
                [sys.executable, "-c", "import clickflow; print(clickflow.__file__)"],
                env={**os.environ, "PYTHONPATH": str(Path(s).resolve())},
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            console.print(f"{labels[s]}: {s} imports {where}")
    console.print(f"{today()}, {machine()}, {load()}")
    trials: list[Trial] = []
    for _ in range(args.trials):
        for mode in args.modes:
            for s in srcs:  # alternating: every tree once per round and mode
                t = run_trial(s, mode == "demo", args.seconds, args.settle)
                t.src = labels.get(s, t.src)
                trials.append(t)
                print_trial(t)
    when = f"{today()}, {machine()}, {load()} at the end"
    console.print(f"\n{when}, window {args.seconds:.0f} s")
    console.print("median % of one core (each trial's total in brackets)\n")
    table = summary(trials)
    print(table)
    if args.write:
        write_results(trials, table, when, args)


GOALS = {"idle": "<= 2% of one core", "demo": "<= 10% of one core"}


def write_results(trials: list[Trial], table: str, when: str, args: argparse.Namespace) -> None:
    """Append this run to bench/results/stack_cpu.md: the per-process medians of every tree,
    then the figures of the last tree (the one under test) for bench/RESULTS.md."""
    last = trials[-1].src
    rows = []
    for mode in args.modes:
        ts = [t for t in trials if t.src == last and t.mode == mode]
        if ts:
            med = statistics.median(t.total_pct for t in ts)
            what = "no traffic" if mode == "idle" else "`--demo` traffic"
            rows.append(
                f"| `clickflow up{' --demo' if mode == 'demo' else ''}`: CPU of every process, "
                f"{what} | {GOALS[mode]} | {med:.1f}% (median of {len(ts)}, "
                f"{args.seconds:.0f} s each) | {machine()}, {load()} | {today()} |"
            )
    text = (
        f"\n## {when}\n\n"
        f"`bench/stack_cpu.py --modes {' '.join(args.modes)} --trials {args.trials} "
        f"--seconds {args.seconds:.0f}`, trees ({', '.join(sorted({t.src for t in trials}))}) "
        "alternating, "
        f"{args.settle:.0f} s settling after `up` said it was up, then a {args.seconds:.0f} s "
        "window; % of one core, median per process over the trials.\n\n"
        f"{table}\n\n| figure | goal | value | machine | date |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    path = Path(__file__).parent / "results" / "stack_cpu.md"
    if not path.exists():
        text = (
            "# What the whole `clickflow up` stack costs in CPU\n\n"
            "Written by `bench/stack_cpu.py`: every process `up` starts (embedded broker, "
            "Redis, PostgreSQL, `serve`, `collect`, `auth`, each `process`, the generator, "
            "`up` itself), idle and with `--demo` traffic. Goals (issue 23): idle <= 2%, "
            "demo <= 10% of one core.\n" + text
        )
    with path.open("a") as f:
        f.write(text)
    console.print(f"appended to {path}")


if __name__ == "__main__":
    main()
