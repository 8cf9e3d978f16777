"""Collector load test: p50/p99 at the seed's 660 req/s, the highest single-event req/s with
p99 < 100 ms, and events/s through batches.

Starts everything itself on this machine: the embedded broker (tansu), Redis, and the
collector as its own process (`python -m clickflow collect`, uvicorn, one process). The load
tool is wrk (Debian package; installed with apt-get when missing), on the same machine.

* fixed rate: wrk has no rate option, so each connection waits ``connections / rate`` between
  requests (wrk's Lua ``delay()``); the achieved rate is printed next to the target.
* max rate: closed loop with 1..64 connections; the best req/s whose p99 stays under 100 ms.
* batches: closed loop, bodies of ``--batch`` events.

Events are ~400 bytes (the seed's average) and anonymous unless ``--token``; rate limiting is
on (the Lua bucket in Redis runs for every request) with a limit above the offered load.

    .venv/bin/python bench/collector_load.py [--duration 10] [--batch 1000] [--token]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from clickflow.collector.auth import issue_token
from clickflow.runtime.broker import start_broker
from clickflow.runtime.ports import free_port, wait_for_port
from clickflow.runtime.redis_server import start_redis

SECRET = "bench-secret-bench-secret-bench-secret!"


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
local wait_ms = {wait_ms}
function delay() return wait_ms end
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


def run_wrk(
    wrk: str, url: str, work: Path, body: bytes, connections: int, seconds: int, wait_ms: float = 0
) -> dict:
    body_file = work / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = work / "post.lua"
    script.write_text(LUA.format(body=body_file, wait_ms=wait_ms))
    threads = max(1, min(2, connections))
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
    return r


def fmt(r: dict) -> str:
    return (
        f"c={r['connections']:>3}  {r['rps']:>9.0f} req/s  p50 {r['p50_us'] / 1000:6.2f} ms  "
        f"p90 {r['p90_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms  "
        f"non-2xx {r['non2xx']}  socket errors {r['socket_errors']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rate", type=float, default=660.0, help="the fixed-rate target")
    ap.add_argument("--batch", type=int, default=1000, help="events per batch request")
    ap.add_argument("--token", action="store_true", help="send a JWT (Redis-cached user_id)")
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
        env.pop("CLICKFLOW_AUTH_URL", None)  # tokens: local check, then cached path is moot
        log = open(work / "collector.log", "ab")
        collector = subprocess.Popen(
            [sys.executable, "-m", "clickflow", "collect"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(collector)
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

        print(f"\n1) fixed rate, target {args.rate:.0f} req/s, single events")
        conns = 20
        fixed = run_wrk(wrk, url, work, single, conns, args.duration, conns * 1000 / args.rate)
        print("   " + fmt(fixed))

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
            print("   " + fmt(res) + f"  = {res['eps']:,.0f} events/s")
            if res["non2xx"] == 0 and (best_batch is None or res["eps"] > best_batch["eps"]):
                best_batch = res

        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        print("\nsummary")
        print(
            f"  660 req/s: achieved {fixed['rps']:.0f} req/s, p50 {fixed['p50_us'] / 1000:.2f} ms,"
            f" p99 {fixed['p99_us'] / 1000:.2f} ms (goal p99 < 20 ms)"
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
