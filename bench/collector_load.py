"""Collector load test: p50/p99 at the seed's 660 req/s, the highest single-event req/s with
p99 < 100 ms, and events/s through batches.

Starts everything itself on this machine: the embedded broker (tansu), Redis, and the
collector as its own process (`python -m clickflow collect`, uvicorn, one process). The load
tool is wrk (Debian package; installed with apt-get when missing), on the same machine.

* fixed rate: wrk (4.x, Debian) has no rate option, so this one uses a small open-loop
  asyncio client in this process: request i is due at start + i/rate on a keep-alive
  connection (a new one when all are busy), and its latency counts from when it was due, so
  a stall is not hidden (no coordinated omission).
* max rate: closed loop with 1..64 connections; the best req/s whose p99 stays under 100 ms.
* batches: closed loop, bodies of ``--batch`` events.

Events are ~400 bytes (the seed's average) and anonymous unless ``--token`` (then the dev
auth service runs too and the user_id comes from the Redis cache); rate limiting is
on (the Lua bucket in Redis runs for every request) with a limit above the offered load.

    .venv/bin/python bench/collector_load.py [--duration 10] [--batch 1000] [--token]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from clickflow.collector.auth import issue_token
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port, wait_for_port
from clickflow.runtime.redis_server import start_redis

SECRET = "bench-secret-bench-secret-bench-secret!"
COLLECTOR_PGID = 0  # set once the collector runs: its CPU per request is printed


def event(i: int, token: str | None) -> dict:
    """About 400 bytes on the wire, like the seed's average event."""
    return {
        "event": "search_filter",
        "token": token,
        "data": {
            "search_query": f"films about space travel and time loops, request {i:08d}" * 3,
            "filters": "genre=scifi,drama;rating>=7.5;year=1990..2024;actors=any;lang=en,ru",
        },
    }


LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '@@{{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: installing it with apt-get (Debian package 'wrk')", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is not available and could not be installed")
    return path


async def _fixed_rate(host: str, port: int, body: bytes, rate: float, seconds: float) -> dict:
    request = (
        b"POST /v1/events HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body))
    ) + body
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    opened = 0

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(request)
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return int(status_line.split()[1])

    async def one(due: float) -> None:
        nonlocal opened
        while True:
            fresh = not idle
            if fresh:
                reader, writer = await asyncio.open_connection(host, port)
                opened += 1
            else:
                reader, writer = idle.pop()
            try:
                status = await exchange(reader, writer)
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if fresh:
                    raise
                # an idle keep-alive connection the server closed: retry on a new one (the
                # latency still counts from when the request was due)
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        idle.append((reader, writer))

    n = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    return {
        "connections": opened,
        "requests": n,
        "rps": n / elapsed,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": int(latencies[-1] * 1e6),
        "non2xx": sum(v for k, v in statuses.items() if not 200 <= k < 300),
        "socket_errors": 0,
    }


def fixed_rate(host: str, port: int, body: bytes, rate: float, seconds: float) -> dict:
    try:
        import uvloop

        return uvloop.run(_fixed_rate(host, port, body, rate, seconds))
    except ImportError:
        return asyncio.run(_fixed_rate(host, port, body, rate, seconds))


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every process in a process group, from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: str, url: str, work: Path, body: bytes, connections: int, seconds: int) -> dict:
    body_file = work / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = work / "post.lua"
    script.write_text(LUA.format(body=body_file))
    threads = max(1, min(2, connections))
    cpu0 = group_cpu_seconds(COLLECTOR_PGID) if COLLECTOR_PGID else 0.0
    out = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("@@"))
    r = json.loads(line[2:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["connections"] = connections
    if COLLECTOR_PGID:
        r["cpu_us"] = (group_cpu_seconds(COLLECTOR_PGID) - cpu0) / max(1, r["requests"]) * 1e6
    return r


def fmt(r: dict) -> str:
    cpu = f"  collector CPU {r['cpu_us']:,.0f} us/req" if "cpu_us" in r else ""
    return (
        f"c={r['connections']:>3}  {r['rps']:>9.0f} req/s  p50 {r['p50_us'] / 1000:6.2f} ms  "
        f"p90 {r['p90_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms  "
        f"non-2xx {r['non2xx']}  socket errors {r['socket_errors']}{cpu}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rate", type=float, default=660.0, help="the fixed-rate target")
    ap.add_argument("--batch", type=int, default=1000, help="events per batch request")
    ap.add_argument("--token", action="store_true", help="send a JWT (Redis-cached user_id)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="1: `clickflow collect` (one process); N: uvicorn --workers N on the same app",
    )
    args = ap.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="clickflow-bench-collector-"))
    procs: list[subprocess.Popen] = []
    try:
        kafka_port = free_port()
        procs.append(start_broker("127.0.0.1", kafka_port, work / "logs"))
        redis_proc, redis_url = start_redis(work / "redis")
        procs.append(redis_proc)
        port = free_port()
        env = {
            **os.environ,
            "CLICKFLOW_DATA_DIR": str(work),
            "CLICKFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "CLICKFLOW_REDIS_URL": redis_url,
            "CLICKFLOW_COLLECTOR_PORT": str(port),
            "CLICKFLOW_JWT_SECRET": SECRET,
            "CLICKFLOW_COLLECTOR_RATE_PER_SECOND": "1000000",
            "CLICKFLOW_COLLECTOR_RATE_BURST": "1000000",
            "CLICKFLOW_LOG_LEVEL": "WARNING",
        }
        env.pop("CLICKFLOW_AUTH_URL", None)
        if args.token:  # the dev auth service, so tokens take the Redis-cached path
            auth_port = free_port()
            env["CLICKFLOW_AUTH_PORT"] = str(auth_port)
            env["CLICKFLOW_AUTH_URL"] = f"http://127.0.0.1:{auth_port}"
            auth_log = open(work / "auth.log", "ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "clickflow", "auth"],
                    env=env,
                    stdout=auth_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if not wait_for_port("127.0.0.1", auth_port, 30):
                raise SystemExit(f"auth service did not start: see {work}/auth.log")
        log = open(work / "collector.log", "ab")
        if args.workers == 1:
            cmd = [sys.executable, "-m", "clickflow", "collect"]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "--factory"]
            cmd += ["clickflow.collector.app:create_app", "--port", str(port)]
            cmd += ["--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
        collector = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(collector)
        global COLLECTOR_PGID
        COLLECTOR_PGID = collector.pid  # start_new_session: its own process group
        if not wait_for_port("127.0.0.1", port, 30):
            raise SystemExit(f"collector did not start: see {work}/collector.log")
        url = f"http://127.0.0.1:{port}/v1/events"
        token = issue_token(SECRET, "bench-user", 3600)[0] if args.token else None
        single = json.dumps(event(0, token)).encode()
        batch = json.dumps([event(i, token) for i in range(args.batch)]).encode()
        r = httpx.post(url, content=single, headers={"Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        r = httpx.post(url, content=batch, headers={"Content-Type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == args.batch, r.text[:300]
        print(f"collector on :{port}; event {len(single)} B, batch {len(batch)} B; wrk {wrk}")
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores, shared)")
        run_wrk(wrk, url, work, single, 8, 3)  # warm-up

        print(f"\n1) fixed rate, {args.rate:.0f} req/s, single events (open-loop asyncio client)")
        cpu0 = group_cpu_seconds(collector.pid)
        fixed = fixed_rate("127.0.0.1", port, single, args.rate, args.duration)
        fixed["cpu_us"] = (group_cpu_seconds(collector.pid) - cpu0) / fixed["requests"] * 1e6
        print("   " + fmt(fixed) + "  (c = connections opened)")

        print("\n2) max single-event req/s with p99 < 100 ms (closed loop)")
        best = None
        for c in (1, 2, 4, 8, 16, 32, 64):
            res = run_wrk(wrk, url, work, single, c, args.duration)
            print("   " + fmt(res))
            if res["p99_us"] < 100_000 and res["non2xx"] == 0:
                if best is None or res["rps"] > best["rps"]:
                    best = res

        print(f"\n3) batches of {args.batch} events (closed loop)")
        best_batch = None
        for c in (1, 2, 4, 8):
            res = run_wrk(wrk, url, work, batch, c, args.duration)
            res["eps"] = res["rps"] * args.batch
            per_event = res.get("cpu_us", 0) / args.batch
            print("   " + fmt(res) + f"  = {res['eps']:,.0f} events/s ({per_event:.1f} us/event)")
            if res["non2xx"] == 0 and (best_batch is None or res["eps"] > best_batch["eps"]):
                best_batch = res

        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        print("\nsummary")
        print(
            f"  {args.rate:.0f} req/s: achieved {fixed['rps']:.0f} req/s, "
            f"p50 {fixed['p50_us'] / 1000:.2f} ms, p99 {fixed['p99_us'] / 1000:.2f} ms "
            "(goal p99 < 20 ms)"
        )
        if best:
            print(
                f"  max single-event: {best['rps']:,.0f} req/s at c={best['connections']}, "
                f"p99 {best['p99_us'] / 1000:.2f} ms (goal >= 5,000/s with p99 < 100 ms)"
            )
        if best_batch:
            print(
                f"  batches: {best_batch['eps']:,.0f} events/s at c={best_batch['connections']}, "
                f"p99 {best_batch['p99_us'] / 1000:.1f} ms per request (goal >= 100,000/s)"
            )
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
