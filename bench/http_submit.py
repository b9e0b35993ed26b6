#!/usr/bin/env python3
"""HTTP submission beside SMTP acceptance: one relay, one run, the same 2 KB messages.

In one run, against one smtprelay daemon (bench/smtprelay-bench.toml plus an [http]
listener on a free loopback port and a bearer token) and the Postfix peer:

* SMTP into smtprelay and into Postfix: the shared harness (../shared/bench/smtp_load.py)
  with Postfix's ``smtp-source`` (16 clients, reused connections: accepted/s) and its
  asyncio generator (16 clients: p50/p99 accept latency) -- the helpers of
  bench/accept.py (Relay, Peer, Harness), reused as they are;
* HTTP into smtprelay: ``POST /v1/messages`` (one message per request) and
  ``POST /v1/messages/batch`` (100 messages per request), 16 concurrent clients on
  keep-alive connections. The load tool (``--client``): **wrk** by default (Debian's
  ``wrk``, in C as smtp-source is, 2 threads, a Lua script for the body, the token and
  the count of 202s; each phase runs as long as the smtp-source load into smtprelay
  took, or ``--http-seconds``: a shorter load leaves more of the delivery that competes
  with acceptance for the two cores until after it, flattering it), or an
  **aiohttp client** in this process (one event loop; ``--messages`` requests). On two
  cores the client's own CPU is taken from the relay's: aiohttp's is about 0.35 ms per
  request, wrk's a tenth of that (``client CPU`` in the results). Every 202 comes after
  the fsync, as every SMTP 250 does. The messages are JSON-built by the relay: a text
  body of about 1.8 KB, 2 KB or so once built.

Figures: messages/s (acknowledged messages over the wall time of the phase), p50/p99
latency of a request (for a batch: of the whole 100-message request), and the CPU time
of all of smtprelay's processes (the main one, the inbound workers, the HTTP prepare
workers) per message: over the wall time of an HTTP phase (delivery meanwhile
included), over the whole smtp-source load for SMTP (which waits until the sink has
every message, so delivery is included in full). Between phases the
spool is drained to the counting sink (smtp-sink on 127.0.0.1:10026, started here for
the HTTP phases; the harness starts its own for the SMTP ones). Only loopback is ever
contacted; everything started is stopped by PID, also on Ctrl-C.

Needs root for the Postfix peer and smtp-source/smtp-sink (postfix.sh install), like
accept.py. ``--no-peer`` leaves Postfix out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accept  # the sibling script, as a module (its Relay, Peer, Harness)

TOKEN = "bench-http-token-0c1d2e3f"
CLIENTS = 16
BATCH = 100
MIN_SECONDS = 5  # the shortest wrk phase (wrk takes whole seconds)
TEXT = ("The quick brown fox jumps over the lazy dog. " * 40)[:1800] + "\n"


def message(n: int) -> dict[str, Any]:
    return {
        "from": "load@bench.example",
        "to": [f"sink{n % 100}@bench.example"],
        "subject": f"bench {n}",
        "text": TEXT,
    }


def tree_cpu(pid: int) -> dict[int, float]:
    """{pid: CPU seconds} of ``pid`` and all its descendants (the inbound workers, the
    HTTP prepare workers and whatever those start)."""
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        out[p] = accept.cpu_seconds(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def cpu_since(pid: int, before: dict[int, float]) -> float:
    """CPU seconds the process tree of ``pid`` spent since ``before`` (a child started
    meanwhile counts in full)."""
    return sum(cpu - before.get(p, 0.0) for p, cpu in tree_cpu(pid).items())


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def _url(port: int, per_request: int) -> str:
    return f"http://127.0.0.1:{port}/v1/messages" + ("/batch" if per_request > 1 else "")


def _body(first: int, per_request: int) -> Any:
    """One request's JSON: a message, or a batch of ``per_request`` numbered from ``first``."""
    if per_request > 1:
        return {"messages": [message(first + k) for k in range(per_request)]}
    return message(first)


def _row(
    client: str,
    accepted: int,
    wall: float,
    latency: tuple[float, float],
    failures: int,
    relay_cpu: float,
    client_cpu: float,
) -> dict[str, Any]:
    """A phase's figures; ``latency``: p50 and p99 of a request, in seconds."""
    return {
        "accepted_per_s": round(accepted / wall, 1),
        "lat_p50_ms": round(latency[0] * 1e3, 2),
        "lat_p99_ms": round(latency[1] * 1e3, 2),
        "messages": accepted,
        "failed_requests": failures,
        "wall_s": round(wall, 2),
        "relay_cpu_ms_per_msg": round(relay_cpu * 1e3 / max(accepted, 1), 2),
        "client_cpu_ms_per_msg": round(client_cpu * 1e3 / max(accepted, 1), 2),
        "client": client,
    }


async def http_phase(
    port: int, requests: int, per_request: int, relay_pid: int | None = None
) -> dict[str, Any]:
    """``requests`` POSTs (``per_request`` messages each) from CLIENTS clients; with the
    CPU time the relay and this client spent per message (the client shares the 2 cores)."""
    url = _url(port, per_request)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    failures = 0
    todo = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal failures
            for i in todo:
                body = _body(i * per_request, per_request)
                started = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        failures += 1
                        continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        client_cpu = time.process_time()
        relay_before = tree_cpu(relay_pid) if relay_pid else {}
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        wall = time.perf_counter() - began
        client_cpu = time.process_time() - client_cpu
        relay_cpu = cpu_since(relay_pid, relay_before) if relay_pid else 0.0
    accepted = len(latencies) * per_request
    latency = (pct(latencies, 50), pct(latencies, 99))
    return _row("aiohttp", accepted, wall, latency, failures, relay_cpu, client_cpu)


# wrk's Lua script: the request (method, headers, body from BENCH_BODY), each answer
# counted, and one JSON line of figures at the end. Each wrk thread runs its own copy.
WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "not_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_phase(
    port: int, seconds: float, per_request: int, out: Path, relay_pid: int | None = None
) -> dict[str, Any]:
    """``seconds`` of POSTs (``per_request`` messages each) by wrk, CLIENTS connections on
    2 threads; the body is the same each time (every POST is a new message: no
    Idempotency-Key). A request wrk cut off at the end is not counted, even if the
    relay queued it."""
    url = _url(port, per_request)
    body_file = out / f"wrk-body-{per_request}.json"
    body_file.write_text(json.dumps(_body(0, per_request)))
    script = out / "wrk-post.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_TOKEN": TOKEN}
    command = ["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds:g}s", "--timeout", "60s"]
    relay_before = tree_cpu(relay_pid) if relay_pid else {}
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ran = subprocess.run(
        [*command, "-s", str(script), url], env=env, capture_output=True, text=True, check=False
    )
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    relay_cpu = cpu_since(relay_pid, relay_before) if relay_pid else 0.0
    figures = [line for line in ran.stdout.splitlines() if line.startswith("{")]
    if ran.returncode != 0 or not figures:
        raise SystemExit(f"wrk failed ({ran.returncode}): {ran.stdout[-2000:]}{ran.stderr[-2000:]}")
    got = json.loads(figures[-1])
    accepted = (got["requests"] - got["not_2xx"]) * per_request
    client_cpu = (client.ru_utime + client.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    latency = (got["p50_us"] / 1e6, got["p99_us"] / 1e6)
    failures = got["not_2xx"] + got["socket_errors"]
    return _row("wrk", accepted, got["duration_us"] / 1e6, latency, failures, relay_cpu, client_cpu)


def drain(relay: accept.Relay, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while relay.qsize() and time.monotonic() < deadline:
        time.sleep(0.5)
    if relay.qsize():
        raise SystemExit(f"smtprelay's queue did not drain in {timeout:g}s ({relay.qsize()} left)")


def smtp_phase(
    harness: accept.Harness,
    target: str,
    port: int,
    spec: str,
    out: Path,
    relay_pid: int | None = None,
) -> dict[str, Any]:
    """One harness load; with ``relay_pid``, the CPU smtprelay's processes spent per
    message (the harness waits until the sink has every message: delivery included)."""
    results = out / f"{target}-{spec.replace(':', '_').replace('+', '_')}.jsonl"
    before = tree_cpu(relay_pid) if relay_pid else {}
    code = harness.run(target, port, spec, json_out=results)
    relay_cpu = cpu_since(relay_pid, before) if relay_pid else None
    if code != 0:
        raise SystemExit(f"the harness failed ({code}) on {target} {spec}: see {out}/harness.log")
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    last = [r for r in records if r.get("accepted_per_s") is not None][-1]
    row = {k: last.get(k) for k in ("accepted_per_s", "lat_p50_ms", "lat_p99_ms")}
    count = int(spec.rpartition("n")[2])
    if relay_cpu is not None and count:
        row["relay_cpu_ms_per_msg"] = round(relay_cpu * 1e3 / count, 2)
    return row


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(accept.REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "?"
    return found.stdout.strip() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=20000, help="per SMTP phase (default 20000)")
    ap.add_argument("--no-peer", action="store_true", help="leave Postfix out")
    ap.add_argument("--out", default=None, help="directory for logs and results")
    ap.add_argument(
        "--client",
        choices=("wrk", "aiohttp"),
        default="wrk",
        help="the HTTP load tool (default wrk: apt install wrk)",
    )
    ap.add_argument(
        "--http-seconds",
        type=int,
        default=None,
        help="length of each wrk phase (default: as long as the smtp-source load took)",
    )
    ap.add_argument(
        "--http-workers",
        type=int,
        default=None,
        help="[http] workers (default: the relay's default, one HTTP front; 0: none)",
    )
    a = ap.parse_args()
    if a.client == "wrk" and shutil.which("wrk") is None:
        ap.error("wrk is not installed (apt install wrk), or use --client aiohttp")
    out = Path(a.out or tempfile.mkdtemp(prefix="smtprelay-http-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "relay").mkdir(exist_ok=True)
    relay = accept.Relay(out / "relay", Path(accept.REPO / ".venv" / "bin" / "smtprelay"))
    http_port = accept.free_port()
    tokens = out / "relay" / "tokens"
    tokens.write_text(f"bench {TOKEN}\n")
    with open(relay.config, "a") as f:
        f.write(f'\n[http]\nlisten = "127.0.0.1:{http_port}"\ntokens_file = "{tokens}"\n')
        if a.http_workers is not None:
            f.write(f"workers = {a.http_workers}\n")
    peer = accept.Peer()
    harness = accept.Harness(sys.executable, out / "harness.log", 120.0, 120.0)
    sink: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    table: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    try:
        relay.start()
        if not a.no_peer:
            peer.start()
        n = a.messages
        table["SMTP -> smtprelay (smtp-source)"] = smtp_phase(
            harness, "smtprelay", relay.port, f"16x2048:n{n}", out, relay.pid
        )
        table["SMTP -> smtprelay (asyncio, latency)"] = smtp_phase(
            harness, "smtprelay", relay.port, f"16x2048:py+n{n // 2}", out
        )
        if not a.no_peer:
            table["SMTP -> Postfix (smtp-source)"] = smtp_phase(
                harness, "postfix", accept.PEER_PORT, f"16x2048:n{n}", out
            )
            table["SMTP -> Postfix (asyncio, latency)"] = smtp_phase(
                harness, "postfix", accept.PEER_PORT, f"16x2048:py+n{n // 2}", out
            )
        sink = subprocess.Popen(
            [
                os.environ.get("SMTP_SINK", "/usr/sbin/smtp-sink"),
                *("-4", "-h", "sink.bench", "-m", "1024", "-t", "30"),
                *(("-u", "nobody") if os.geteuid() == 0 else ()),
                f"127.0.0.1:{accept.SINK_PORT}",
                "1024",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        drain(relay, 120)
        single = "HTTP POST /v1/messages"
        batched = f"HTTP POST /v1/messages/batch ({BATCH}/request)"
        if a.client == "wrk":
            # As long a load as SMTP's: in a shorter one more of the delivery that
            # competes for the cores comes after the measured load.
            smtp_rate = table["SMTP -> smtprelay (smtp-source)"]["accepted_per_s"]
            seconds = a.http_seconds or max(MIN_SECONDS, round(n / smtp_rate))
            table[single] = wrk_phase(http_port, seconds, 1, out, relay.pid)
            drain(relay, 180)
            table[batched] = wrk_phase(http_port, seconds, BATCH, out, relay.pid)
        else:
            table[single] = asyncio.run(http_phase(http_port, n, 1, relay.pid))
            drain(relay, 120)
            table[batched] = asyncio.run(
                http_phase(http_port, max(CLIENTS, 5 * n // BATCH), BATCH, relay.pid)
            )
        drain(relay, 600)
    finally:
        harness.abort()
        relay.stop()
        peer.stop()
        if sink is not None:
            sink.kill()
            sink.wait()
    smtp = table["SMTP -> smtprelay (smtp-source)"]["accepted_per_s"]
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"commit: {_commit()}")
    print(f"HTTP load tool: {a.client}")
    print(
        "| load | messages/s | x smtprelay SMTP | p50 ms | p99 ms | relay CPU ms/msg "
        "| client CPU ms/msg |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in table.items():
        rate = row["accepted_per_s"]
        ratio = f"{rate / smtp:.2f}" if rate and smtp else "-"
        p50, p99 = row.get("lat_p50_ms"), row.get("lat_p99_ms")
        cpu = row.get("relay_cpu_ms_per_msg", "-")
        client = row.get("client_cpu_ms_per_msg", "-")
        print(f"| {name} | {rate} | {ratio} | {p50 or '-'} | {p99 or '-'} | {cpu} | {client} |")
    (out / "results.json").write_text(json.dumps(table, indent=1))
    print(f"results: {out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
