#!/usr/bin/env python3
"""Where smtprelay's CPU goes under load: py-spy profiles plus per-thread CPU accounting.

It starts the harness's counting sink on 127.0.0.1:10026 and smtprelay alone (same
temporary config as bench/accept.py: it delivers everything to that sink). For each combo
(default C=16 with 100 KB, then C=16 with 2 KB, reused connections) it drives smtprelay
with Postfix's smtp-source for a few seconds of warm-up, then takes consecutive py-spy
windows of --duration seconds each:

  gil     `py-spy record --gil`: only the thread holding the GIL is sampled, i.e. the
          Python-level CPU that serialises the whole daemon;
  active  py-spy's default: every thread that is not idle. Executor threads blocked in
          fsync() count as active here, so this view mixes CPU with disk waits;
  native  `--native` (optional, blocking): C frames too (uvloop, libc, the kernel entry).

py-spy follows the inbound worker processes too (--subprocesses), so the samples cover
SMTP sessions and delivery. During each window it also reads /proc: CPU seconds
(user/system) of the main process's event-loop thread and executor threads (delivery;
with [server] workers = 0, everything), the machine's user/system/iowait/idle split, and the
messages accepted and delivered per second (sink count plus queue growth; py-spy slows
the daemon a little). For each window it prints the top functions by own time (the leaf
frame of a sample) and by cumulative time (any frame of a sample), line numbers folded,
as shares of the window's samples. Raw collapsed stacks are kept in --out (open them in
speedscope or flamegraph.pl).

Needs py-spy in the repo's .venv (`.venv/bin/pip install py-spy`) and root (ptrace).
Bounded: the load generator and py-spy are stopped by PID when the windows are done, and
a window is killed after --duration + 30 s.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accept import REPO, SHARED, SINK_PORT, Relay, code_version, parse_combo

sys.path.insert(0, str(SHARED))
from smtp_load import Sink  # type: ignore[import-not-found]  # the harness's smtp-sink

# frames that only carry the start-up path or the thread machinery: always ~100% cumulative
SCAFFOLD = re.compile(
    r"^(<module> \(smtprelay\)|main \(smtprelay/cli\.py\)|_serve \(smtprelay/cli\.py\)|"
    r"run \(smtprelay/app\.py\)|run \(uvloop/__init__\.py\)|Runner\.run \(asyncio/runners\.py\)|"
    r"Thread\._bootstrap(_inner)? \(threading\.py\)|Thread\.run \(threading\.py\)|"
    r"thread_run \(libpython.*\)|0x[0-9a-f]+ \(libc\.so\.6\))$"
)
LINENO = re.compile(r" \((.*?)(?::\d+)?\)$")


def fold(frame: str) -> str:
    """'Spool.commit (smtprelay/spool/store.py:53)' -> 'Spool.commit (smtprelay/spool/store.py)'."""
    return LINENO.sub(lambda m: f" ({m.group(1)})", frame)


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """{tid: (name, user s, system s)} for every thread of a process."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name = st[st.index("(") + 1 : st.rindex(")")]
            fields = st.rsplit(")", 1)[1].split()
            out[int(tid)] = (name, int(fields[11]) / hz, int(fields[12]) / hz)
    return out


def machine_cpu() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def analyse(raw: Path, top: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    cum: collections.Counter[str] = collections.Counter()
    per_thread: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        group = "other"
        if frames and frames[0].startswith("thread ("):
            group = "event loop (MainThread)" if "MainThread" in frames[0] else "executor threads"
            frames = frames[1:]
        total += n
        per_thread[group] += n
        folded = [fold(f) for f in frames]
        if folded:
            own[folded[-1]] += n
        for f in set(folded):
            if not SCAFFOLD.match(f):
                cum[f] += n
    if not total:
        return ["    (no samples)"]

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f}%"

    lines = [
        f"    samples: {total}; by thread: "
        + ", ".join(f"{k} {pct(v).strip()}" for k, v in per_thread.most_common())
    ]
    lines.append(f"    top {top} by own time (leaf frame):")
    lines += [f"      {pct(n)}  {f}" for f, n in own.most_common(top)]
    lines.append(
        f"    top {top} by cumulative time (frame anywhere in the stack; "
        "start-up and threading frames omitted):"
    )
    lines += [f"      {pct(n)}  {f}" for f, n in cum.most_common(top)]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--combos",
        default="16x102400,16x2048",
        help="CxS[:pc] list, as in accept.py (default 16x102400,16x2048)",
    )
    ap.add_argument("--duration", type=int, default=15, help="seconds per py-spy window")
    ap.add_argument(
        "--modes",
        default="gil,active",
        help="py-spy windows per combo, in order: gil, active, native",
    )
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--warm", type=float, default=3.0, help="seconds of load before sampling")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument(
        "--out",
        default=None,
        help="directory for raw stacks and the report "
        "(default /tmp/smtprelay-profile-YYYYmmdd-HHMMSS)",
    )
    ap.add_argument("--smtprelay", default=str(REPO / ".venv" / "bin" / "smtprelay"))
    ap.add_argument("--py-spy", default=str(REPO / ".venv" / "bin" / "py-spy"))
    a = ap.parse_args()
    if not os.access(a.py_spy, os.X_OK):
        raise SystemExit(f"{a.py_spy} not found: {REPO}/.venv/bin/pip install py-spy")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("gil", "active", "native"):
            raise SystemExit(f"unknown mode {m!r}")
    smtp_source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    out = Path(a.out or f"/tmp/smtprelay-profile-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtprelay-profile-"))
    relay = Relay(work, Path(a.smtprelay))
    children: list[subprocess.Popen[bytes]] = []
    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    sink = None
    try:
        sink = Sink(SINK_PORT)  # the template's smarthost: deliveries succeed, as in accept.py
        relay.start()
        say(
            f"# smtprelay profile {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, {code_version()}, "
            f"pid {relay.pid} "
            f"on 127.0.0.1:{relay.port}, {os.cpu_count()} CPUs, py-spy windows of "
            f"{a.duration}s at {a.rate} Hz; raw stacks in {out}/"
        )
        for spec in a.combos.split(","):
            combo = parse_combo(spec.strip())
            # far more messages than the windows need: the generator is stopped by PID
            args = [
                smtp_source,
                "-4",
                "-s",
                str(combo["c"]),
                "-m",
                "1000000",
                "-l",
                str(combo["size"]),
                "-M",
                "client.bench",
                "-f",
                "from@example.com",
                "-t",
                "to@example.net",
                f"127.0.0.1:{relay.port}",
            ]
            if not combo["per_conn"]:
                args.insert(1, "-d")
            gen = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )
            children.append(gen)
            say()
            say(
                f"## C={combo['c']}, {combo['size']} B, "
                f"{'1 msg/conn' if combo['per_conn'] else 'reused connections'} (smtp-source)"
            )
            time.sleep(a.warm)
            for mode in modes:
                raw = (
                    out
                    / f"{combo['c']}x{combo['size']}{'-pc' if combo['per_conn'] else ''}-{mode}.txt"
                )
                cmd = [
                    a.py_spy,
                    "record",
                    "--pid",
                    str(relay.pid),
                    "--subprocesses",  # the inbound workers serve the SMTP sessions
                    "--duration",
                    str(a.duration),
                    "--rate",
                    str(a.rate),
                    "--format",
                    "raw",
                    "--threads",
                    "-o",
                    str(raw),
                ]
                cmd += {
                    "gil": ["--gil", "--nonblocking"],
                    "active": ["--nonblocking"],
                    "native": ["--native"],
                }[mode]
                t0, q0, d0, th0, m0 = (
                    time.monotonic(),
                    relay.qsize(),
                    sink.count,
                    thread_cpu(relay.pid),
                    machine_cpu(),
                )
                spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                children.append(spy)
                try:
                    spy_out = spy.communicate(timeout=a.duration + 30)[0].decode(errors="replace")
                except subprocess.TimeoutExpired:
                    stop(spy)
                    spy_out = "py-spy timed out"
                dt = time.monotonic() - t0
                q1, d1 = relay.qsize(), sink.count
                th1, m1 = thread_cpu(relay.pid), machine_cpu()
                if gen.poll() is not None:
                    say(f"  WARNING: smtp-source ended early (status {gen.returncode})")
                main_u = main_s = ex_u = ex_s = 0.0
                for tid, (name, u, s) in th1.items():
                    u0, s0 = th0.get(tid, (name, 0.0, 0.0))[1:]
                    if tid == relay.pid:
                        main_u, main_s = u - u0, s - s0
                    else:
                        ex_u, ex_s = ex_u + u - u0, ex_s + s - s0
                d = [y - x for x, y in zip(m0, m1, strict=True)]
                tot = sum(d[:8]) or 1
                msgs = (d1 - d0) + (q1 - q0)  # accepted = delivered + queue growth
                say(
                    f"### window '{mode}' ({dt:.1f}s) while sampled: {msgs / dt:.0f} msg/s "
                    f"accepted, {(d1 - d0) / dt:.0f} msg/s delivered, queue {q0} -> {q1}"
                )
                loop_pct, ex_pct = 100 * (main_u + main_s) / dt, 100 * (ex_u + ex_s) / dt
                say(
                    f"    smtprelay CPU: event-loop thread {main_u:.2f}s user + {main_s:.2f}s sys "
                    f"({loop_pct:.0f}% of a core); executor threads "
                    f"{ex_u:.2f}s user + {ex_s:.2f}s sys ({ex_pct:.0f}% of a core)"
                    + (
                        f"; per message {1000 * (main_u + main_s) / msgs:.2f} ms loop + "
                        f"{1000 * (ex_u + ex_s) / msgs:.2f} ms executor"
                        if msgs
                        else ""
                    )
                )
                say(
                    f"    machine ({os.cpu_count()} CPUs): user {100 * (d[0] + d[1]) / tot:.0f}%, "
                    f"system {100 * (d[2] + d[5] + d[6]) / tot:.0f}%, "
                    f"iowait {100 * d[4] / tot:.0f}%, "
                    f"idle {100 * d[3] / tot:.0f}%, steal {100 * d[7] / tot:.0f}%"
                )
                if not raw.exists():
                    say(f"    py-spy failed: {spy_out.strip()[-500:]}")
                    rc = 1
                    continue
                for line in analyse(raw, a.top):
                    say(line)
            stop(gen)
            for _ in range(120):  # let the queue drain before the next combo (bounded)
                if not relay.qsize():
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        say("# interrupted")
        rc = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for proc in children:
            stop(proc)
        relay.stop()
        if sink is not None:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    (out / "profile.txt").write_text("\n".join(report) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
