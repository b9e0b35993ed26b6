#!/usr/bin/env python3
"""Acceptance benchmark: smtprelay against Postfix, same load, same run.

Starts smtprelay (temporary config from bench/smtprelay-bench.toml: free loopback port,
fresh spool, log level "warning") and the Postfix peer (../shared/bench/peers/postfix.sh,
127.0.0.1:10025 relaying to a counting sink on 127.0.0.1:10026), then drives both with
the shared harness ../shared/bench/smtp_load.py (Postfix's smtp-source, or its asyncio
generator for p50/p99 accept latency), combo by combo and run by run, the two targets
interleaved (their order alternates from run to run). It prints the harness's table
(make_table.py) and, per combo, the ratio smtprelay/postfix of accepted messages per
second, then checks the issue's targets:

    2 KB,   C=16, reused connections: smtprelay >= 1.3 x Postfix
    100 KB, C=16, reused connections: smtprelay >= 1.0 x Postfix

Every harness invocation is one run of one combo against one target. Both relays
deliver everything to the harness's counting sink (smtp-sink on 127.0.0.1:10026: Postfix's
relayhost, smtprelay's [delivery.smarthost] in the template), and the harness waits until
the sink has counted all N messages, so each run also gives delivered/s and each queue is
empty before the next run starts (checked, and recorded as queue_before).

Only loopback is ever contacted: the script refuses a config whose delivery could leave
127.0.0.0/8 (mode "mx" would ask the system's DNS). Each run has a hard time limit
(--gen-timeout, --drain-timeout); smtprelay, Postfix and every harness child are stopped
by PID at the end, also on Ctrl-C or SIGTERM.

Needs root (postfix.sh reconfigures and starts the system's Postfix) and Postfix's
smtp-source/smtp-sink (`bash ../shared/bench/peers/postfix.sh install`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

Record = dict[str, Any]  # one harness JSON line, or a parsed combo
Key = tuple[int, int, bool, str]  # (C, size, one msg per connection, generator)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED = Path(os.environ.get("SMTPRELAY_SHARED_BENCH", REPO.parent / "shared" / "bench"))
TEMPLATE = BENCH / "smtprelay-bench.toml"
RELAY_NAME = "smtprelay"
PEER_NAME = "postfix"
PEER_PORT = 10025
SINK_PORT = 10026

# smtp-source over reused connections at C=1/16/64 with 2 KB, C=16/64 with 100 KB;
# one connection per message; the asyncio generator for p50/p99 accept latency.
DEFAULT_COMBOS = ",".join(
    [
        "1x2048:n2000",
        "16x2048:n5000",
        "64x2048:n5000",
        "16x102400:n3000",
        "64x102400:n3000",
        "16x2048:pc+n3000",
        "16x2048:py+n3000",
        "16x102400:py+n2000",
    ]
)
# --full: every C x S x connection mode with smtp-source, plus the latency combos.
FULL_COMBOS = ",".join(
    [
        f"{c}x{s}:{'pc+' if pc else ''}n{n}"
        for pc in (False, True)
        for s, ns in ((2048, (2000, 5000, 5000)), (102400, (1000, 3000, 3000)))
        for c, n in zip((1, 16, 64), ns, strict=True)
    ]
    + ["1x2048:py+n2000", "16x2048:py+n3000", "64x2048:py+n3000", "16x102400:py+n2000"]
)
# (C, size, one msg per connection, generator) -> minimum ratio smtprelay/postfix
TARGETS = {
    (16, 2048, False, "smtp-source"): 1.3,
    (16, 102400, False, "smtp-source"): 1.0,
}
# process names the harness counts as the benchmark's own (the rest is "foreign" noise)
OWN_PATTERN = (
    r"smtprelay|postfix|smtpd|cleanup|qmgr|trivial-rewrite|^smtp$|anvil|scache|"
    r"postlogd|proxymap|pickup|smtp-sink|smtp-source|smtp_load|tlsmgr|bounce|"
    r"py-spy|accept\.py|cpu_profile\.py"
)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_cpu(pid: int) -> dict[int, float]:
    """{pid: CPU seconds} of smtprelay's main process and its inbound workers."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return {p: cpu_seconds(p) for p in [pid, *children]}


POSTFIX_PROCESSES = {
    "master", "smtpd", "cleanup", "qmgr", "smtp", "trivial-rewrite", "anvil", "scache",
    "postlogd", "proxymap", "pickup", "tlsmgr", "bounce",
}  # fmt: skip


def postfix_cpu() -> dict[int, float]:
    """{pid: CPU seconds} of Postfix's processes (those alive now)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() not in POSTFIX_PROCESSES:
                        continue
            except OSError:
                continue
            out[int(d)] = cpu_seconds(int(d))
    return out


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback_only(config: Path) -> None:
    """Refuse a relay config whose delivery could contact anything but loopback."""
    with config.open("rb") as f:
        delivery = tomllib.load(f).get("delivery", {})
    hops = list(delivery.get("smarthost", {}).get("hosts", []))
    hops += list(delivery.get("routes", {}).values())
    bad = [h for h in hops if not is_loopback(h.rpartition(":")[0])]
    if delivery.get("mode", "mx") != "smarthost" or bad or not hops:
        raise SystemExit(
            f'{TEMPLATE}: delivery must go to loopback only ([delivery] mode = "smarthost", '
            f'[delivery.smarthost] hosts = ["127.0.0.1:{SINK_PORT}"]); refusing {bad or delivery}'
        )
    if f"127.0.0.1:{SINK_PORT}" not in delivery.get("smarthost", {}).get("hosts", []):
        raise SystemExit(f"{TEMPLATE}: the smarthost must be the sink, 127.0.0.1:{SINK_PORT}")


class Relay:
    """One smtprelay daemon on a free loopback port with a fresh spool; stopped by PID."""

    def __init__(self, workdir: Path, binary: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.spool = workdir / "spool"
        self.config = workdir / "smtprelay.toml"
        self.log_path = workdir / "smtprelay.log"
        text = TEMPLATE.read_text().replace("@PORT@", str(self.port))
        self.config.write_text(text.replace("@SPOOL@", str(self.spool)))
        check_loopback_only(self.config)
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"smtprelay exited with status {self.proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"smtprelay did not answer on 127.0.0.1:{self.port} within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def qsize(self) -> int:
        """Messages in the spool queue (envelopes)."""
        try:
            with os.scandir(self.spool / "queue") as it:
                return sum(1 for e in it if e.name.endswith(".msg"))
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Peer:
    """The Postfix peer, through the shared postfix.sh (its own pid file, by PID)."""

    script = SHARED / "peers" / "postfix.sh"

    def __init__(self) -> None:
        self.started = False

    def start(self) -> str:
        self.started = True
        out = subprocess.run(
            ["bash", str(self.script), "start"], capture_output=True, text=True, timeout=180
        )
        if out.returncode != 0:
            raise SystemExit(f"postfix.sh start failed:\n{out.stdout}{out.stderr}")
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    def qsize(self) -> int:
        out = subprocess.run(
            ["bash", str(self.script), "qsize"], capture_output=True, text=True, timeout=60
        )
        return int(out.stdout.strip() or 0)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["bash", str(self.script), "stop"], capture_output=True, timeout=60)
            self.started = False


class Harness:
    """Runs smtp_load.py in its own process group, so an abort can stop its children too."""

    def __init__(
        self, python: str, log_path: Path, gen_timeout: float, drain_timeout: float
    ) -> None:
        self.python = python
        self.log_path = log_path
        self.gen_timeout = gen_timeout
        self.drain_timeout = drain_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def run(
        self,
        target: str,
        port: int,
        spec: str,
        *,
        sink: bool = True,
        warmup: int = 0,
        json_out: Path | None = None,
    ) -> int:
        args = [
            self.python,
            str(SHARED / "smtp_load.py"),
            "--target",
            f"{target}=127.0.0.1:{port}",
            "--combos",
            spec,
            "--runs",
            "1",
            "--warmup",
            str(warmup),
            "--gen-timeout",
            str(self.gen_timeout),
            "--drain-timeout",
            str(self.drain_timeout),
            "--own-pattern",
            OWN_PATTERN,
            "--label",
            "accept.py",
        ]
        if sink:
            args += ["--sink-port", str(SINK_PORT)]
        else:
            args.append("--no-sink")
        if json_out is not None:
            args += ["--json-out", str(json_out)]
        # the generator run, the drain wait and start/stop of the sink, with margin
        limit = (2 if warmup else 1) * (self.gen_timeout + self.drain_timeout) + 60
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(args) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                return self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                self.abort()
                return -1
            finally:
                self.proc = None

    def abort(self) -> None:
        """SIGINT the harness's group (it stops its sink), then SIGKILL what is left."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------------- combos and results


def parse_combo(spec: str) -> Record:
    """The harness's ``CxS[:flags]`` (flags joined by '+': pc, py, nNNN)."""
    head, _, flags = spec.partition(":")
    c, _, size = head.partition("x")
    flagset = set(flags.split("+")) if flags else set()
    n = next((int(f[1:]) for f in flagset if f.startswith("n") and f[1:].isdigit()), 5000)
    return {
        "spec": spec,
        "c": int(c),
        "size": int(size),
        "per_conn": "pc" in flagset,
        "gen": "py" if "py" in flagset else "smtp-source",
        "n": n,
    }


def code_version() -> str:
    """git describe plus a digest of smtprelay/*.py as they are now (the tree may be dirty)."""
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted((REPO / "smtprelay").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return f"repo {git or '?'} (smtprelay/*.py sha256 {digest.hexdigest()[:12]})"


def key_of(rec: Record) -> Key:
    return (rec["c"], rec["size"], rec["per_conn"], rec["gen"])


def describe(key: Key) -> str:
    c, size, per_conn, gen = key
    s = f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"
    return f"C={c}, {s}, {'1 msg/conn' if per_conn else 'reuse'}{', py-gen' if gen == 'py' else ''}"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def ratio_report(records: list[Record], combos: list[Record]) -> tuple[str, list[str], bool]:
    """Markdown table of smtprelay/postfix per combo, the target verdicts, all-met flag."""
    by: dict[Key, dict[str, list[Record]]] = {}
    for r in records:
        by.setdefault(key_of(r), {}).setdefault(r["target"], []).append(r)
    lines = [
        "| combo | N | smtprelay acc/s median (min–max) | postfix acc/s median (min–max) "
        "| ratio smtprelay/postfix | per-run ratios | smtprelay p50/p99 ms | postfix p50/p99 ms "
        "| delivered/s smtprelay / postfix (ratio) | CPU ms/msg smtprelay / postfix "
        "| foreign CPU s/run (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for combo in combos:
        key = (combo["c"], combo["size"], combo["per_conn"], combo["gen"])
        runs = by.get(key, {})
        rel, peer = runs.get(RELAY_NAME, []), runs.get(PEER_NAME, [])

        def acc(rs: list[Record]) -> list[float]:
            return [r["accepted_per_s"] for r in rs if r.get("accepted_per_s")]

        def cell(rs: list[Record]) -> str:
            v = acc(rs)
            if not v:
                return "failed" if rs else "–"
            return f"{median(v):.1f} ({min(v):.1f}–{max(v):.1f})" + (
                "" if len(v) == len(rs) else f" [{len(rs) - len(v)} failed]"
            )

        def lat(rs: list[Record]) -> str:
            p50 = median([r["lat_p50_ms"] for r in rs if r.get("lat_p50_ms") is not None])
            p99 = median([r["lat_p99_ms"] for r in rs if r.get("lat_p99_ms") is not None])
            return "" if p50 is None else f"{p50:.2f} / {p99:.2f}"

        mr, mp = median(acc(rel)), median(acc(peer))
        ratio = mr / mp if mr and mp else None
        ratios[key] = ratio
        per_run = []
        peer_by_run = {r["run"]: r for r in peer}
        for r in rel:
            p = peer_by_run.get(r["run"])
            if p and r.get("accepted_per_s") and p.get("accepted_per_s"):
                per_run.append(r["accepted_per_s"] / p["accepted_per_s"])
        cpu_r = median([r["cpu_ms_per_msg"] for r in rel if r.get("cpu_ms_per_msg") is not None])
        cpu_p = median([r["cpu_ms_per_msg"] for r in peer if r.get("cpu_ms_per_msg") is not None])
        dr = median([r["delivered_per_s"] for r in rel if r.get("delivered_per_s")])
        dp = median([r["delivered_per_s"] for r in peer if r.get("delivered_per_s")])
        dratio = f" ({dr / dp:.2f})" if dr and dp else ""
        foreign = max([r.get("foreign_cpu_s") or 0.0 for r in rel + peer] or [0.0])
        lines.append(
            f"| {describe(key)} | {combo['n']} | {cell(rel)} | {cell(peer)} "
            f"| **{fmt(ratio, '.2f')}** | {' '.join(f'{x:.2f}' for x in per_run)} "
            f"| {lat(rel)} | {lat(peer)} | {fmt(dr)} / {fmt(dp)}{dratio} "
            f"| {fmt(cpu_r, '.2f')} / {fmt(cpu_p, '.2f')} | {foreign:.1f} |"
        )
    verdicts = []
    all_met = True
    for key, minimum in TARGETS.items():
        ratio = ratios.get(key)
        if ratio is None:
            verdicts.append(f"target {describe(key)}: >= {minimum:.1f} x postfix: NOT MEASURED")
            all_met = False
            continue
        met = ratio >= minimum
        all_met &= met
        verdicts.append(
            f"target {describe(key)}: >= {minimum:.1f} x postfix: "
            f"{ratio:.2f} -> {'MET' if met else 'NOT MET'}"
        )
    return "\n".join(lines), verdicts, all_met


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--combos",
        default=None,
        help="harness combos CxS[:flags] (flags joined by '+': pc = one connection "
        "per message, py = asyncio generator with p50/p99, nNNN = messages "
        f"per run). Default: {DEFAULT_COMBOS}",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="every C in 1,16,64 x 2 KB,100 KB x reuse/1 msg per connection, "
        "plus latency combos (about twice as long)",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per combo and target (default 3)")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every combo's message count (e.g. 0.2 for a quick look)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="messages sent to each target before measuring (default 200)",
    )
    ap.add_argument(
        "--gen-timeout",
        type=float,
        default=120.0,
        help="hard limit of one generator run, seconds (default 120)",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="limit of the wait for the sink to count all messages after a run, "
        "seconds (default 60)",
    )
    ap.add_argument(
        "--no-peer",
        action="store_true",
        help="load smtprelay only (no Postfix, no ratios): for quick iterations",
    )
    ap.add_argument("--check", action="store_true", help="exit 3 when a target ratio is not met")
    ap.add_argument(
        "--out",
        default=None,
        help="directory for results.jsonl, table.md and logs "
        "(default /tmp/smtprelay-accept-YYYYmmdd-HHMMSS)",
    )
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for smtp_load.py (default: the one running this script)",
    )
    ap.add_argument(
        "--smtprelay",
        default=str(REPO / ".venv" / "bin" / "smtprelay"),
        help="the smtprelay executable (default: the repo's .venv)",
    )
    a = ap.parse_args()

    spec_list = a.combos or (FULL_COMBOS if a.full else DEFAULT_COMBOS)
    combos = []
    for spec in spec_list.split(","):
        combo = parse_combo(spec.strip())
        if a.scale != 1.0:
            n = max(combo["c"], int(combo["n"] * a.scale))
            head, _, flags = combo["spec"].partition(":")
            flags = "+".join(
                [f for f in flags.split("+") if f and not (f.startswith("n") and f[1:].isdigit())]
                + [f"n{n}"]
            )
            combo = parse_combo(f"{head}:{flags}")
        combos.append(combo)
    for tool in ("smtp-source", "smtp-sink"):
        if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)):
            raise SystemExit(f"{tool} not found: bash {SHARED}/peers/postfix.sh install")
    if not a.no_peer and os.geteuid() != 0:
        raise SystemExit("the Postfix peer needs root (postfix.sh configures /etc/postfix)")

    out = Path(a.out or f"/tmp/smtprelay-accept-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.write_text("")
    work = Path(tempfile.mkdtemp(prefix="smtprelay-accept-"))
    relay = Relay(work, Path(a.smtprelay))
    peer = Peer()
    harness = Harness(a.python, out / "harness.log", a.gen_timeout, a.drain_timeout)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    records: list[Record] = []
    try:
        print(
            f"# smtprelay accept benchmark {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, "
            f"{code_version()}, {os.cpu_count()} CPUs, runs={a.runs}, "
            f"harness python {a.python}"
        )
        relay.start()
        print(f"# smtprelay pid {relay.pid} on 127.0.0.1:{relay.port}, spool {relay.spool}")
        targets = [(RELAY_NAME, relay.port)]
        if not a.no_peer:
            print("# " + peer.start())
            targets.append((PEER_NAME, PEER_PORT))
        print(f"# results in {out}/ (results.jsonl, table.md, harness.log)", flush=True)
        qsize = {RELAY_NAME: relay.qsize, PEER_NAME: peer.qsize}
        if a.warmup:
            for name, port in targets:
                harness.run(name, port, "4x2048:n200", warmup=a.warmup)
        for combo in combos:
            for run in range(1, a.runs + 1):
                order = targets if run % 2 else targets[::-1]
                for name, port in order:
                    for _ in range(60):  # the last deliveries leave the queue (bounded)
                        left = qsize[name]()
                        if not left:
                            break
                        time.sleep(0.5)
                    tmp = out / "run.jsonl"
                    tmp.write_text("")
                    cpu0 = relay_cpu(relay.pid) if name == RELAY_NAME else postfix_cpu()
                    status = harness.run(name, port, combo["spec"], json_out=tmp)
                    cpu1 = relay_cpu(relay.pid) if name == RELAY_NAME else postfix_cpu()
                    cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
                    recs = [json.loads(x) for x in tmp.read_text().splitlines() if x.strip()]
                    rec = next((r for r in recs if not r.get("summary")), None)
                    if rec is None:
                        print(
                            f"{combo['spec']} run {run} {name}: harness failed "
                            f"(status {status}), see {out}/harness.log",
                            flush=True,
                        )
                        rc = 1
                        continue
                    rec["run"] = run
                    rec["harness_status"] = status
                    rec["queue_before"] = left
                    rec["cpu_s"] = round(cpu, 2)
                    rec["cpu_ms_per_msg"] = round(1000 * cpu / rec["n"], 3)
                    if not rec["ok"] or rec.get("delivered_per_s") is None:
                        rc = 1
                    records.append(rec)
                    with open(results, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    lat = (
                        f", p50/p99 {rec['lat_p50_ms']}/{rec['lat_p99_ms']} ms"
                        if "lat_p50_ms" in rec
                        else ""
                    )
                    problems = "" if rec["ok"] else f"  FAILED: {rec.get('err', '')[:200]}"
                    if rec.get("delivered_per_s") is None:
                        problems += f"  NOT ALL DELIVERED ({rec.get('delivered')}/{rec['n']})"
                    if left:
                        problems += f"  ({left} still queued before the run)"
                    print(
                        f"{combo['spec']:>20} run {run}/{a.runs} {name:>9}: "
                        f"{rec['accepted_per_s']} acc/s{lat}, "
                        f"delivered/s {rec.get('delivered_per_s')}, "
                        f"CPU {rec['cpu_ms_per_msg']:.2f} ms/msg, "
                        f"machine busy {rec['sys_cpu_busy_pct']}%{problems}",
                        flush=True,
                    )
                    (out / "run.jsonl").unlink()
    except KeyboardInterrupt:
        print("# interrupted: stopping everything", flush=True)
        harness.abort()
        rc = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        harness.abort()
        relay.stop()
        peer.stop()
        if relay.log_path.exists():
            shutil.copy(relay.log_path, out / "smtprelay.log")
        shutil.rmtree(work, ignore_errors=True)

    if not records:
        return rc or 1
    table = subprocess.run(
        [a.python, str(SHARED / "make_table.py"), "--from-runs", "--short", str(results)],
        capture_output=True,
        text=True,
    ).stdout
    report = ["", "## Runs pooled by make_table.py (medians of the runs above)", "", table.rstrip()]
    if not a.no_peer:
        ratios, verdicts, met = ratio_report(records, combos)
        report += [
            "",
            "## smtprelay / postfix, accepted messages per second "
            "(ratio of the medians; per-run ratios pair the interleaved runs)",
            "",
            ratios,
            "",
            *verdicts,
        ]
        if a.check and not met and rc == 0:
            rc = 3
    report += [
        "",
        "Both relays deliver to the same counting sink; a run ends when the sink has all N "
        "messages, so every run starts with empty queues. CPU ms/msg: smtprelay's processes "
        "(main and inbound workers), "
        "or the sum of Postfix's processes (smtpd, cleanup, qmgr, smtp, ...), during the run "
        "including its delivery, divided by N (the sink and the generator are not counted). "
        "'foreign CPU' is CPU used during a run by processes that are not part of the "
        "benchmark (other work on the machine).",
    ]
    text = "\n".join(report) + "\n"
    print(text)
    (out / "table.md").write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
