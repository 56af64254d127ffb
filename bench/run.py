"""loadmgr benchmarks: every figure is a ratio against a baseline measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--only P1,P4] [--json PATH]

P1 step overhead, P2 client round trip, P3 scale, P4 event latency, P5 repository scale.
Prints a table and writes JSON (default bench/results/latest.json). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent


# ---------------------------------------------------------------------------- a daemon to measure


@dataclass
class Daemon:
    home: Path
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    socket: Path = field(init=False)
    database: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket = self.home / "run" / "loadmgrd.sock"
        self.database = self.home / "state" / "loadmgr.db"
        (self.home / "etc").mkdir(parents=True, exist_ok=True)
        (self.home / "etc" / "loadmgr_config.cfg").write_text(
            textwrap.dedent(
                f"""\
                [repository]
                database = {self.database}
                [daemon]
                socket = {self.socket}
                log_level = WARNING
                max_concurrent_jobs = 500
                [jobs]
                queue_size_limit = 1000
                [logging]
                location = {self.home}/logs
                """
            )
            + self.extra
        )

    def start(self) -> None:
        notify_path = self.home / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(60)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOADMGR_")}
        env["NOTIFY_SOCKET"] = str(notify_path)
        self.proc = subprocess.Popen(
            [str(BIN / "loadmgrd"), "--config", str(self.home / "etc" / "loadmgr_config.cfg")],
            env=env,
            stderr=open(self.home / "daemon.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        while b"READY=1" not in notify.recv(4096):
            pass
        notify.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None

    def rpc(self, method: str, params: dict[str, Any] | None = None, conn: socket.socket | None = None) -> Any:
        own = conn is None
        sock = conn or self.connect()
        try:
            sock.sendall(
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}).encode() + b"\n"
            )
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        finally:
            if own:
                sock.close()
        reply = json.loads(data)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']['message']}")
        return reply["result"]

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.socket))
        return sock

    def import_job(self, name: str, steps: list[tuple[int, str, str]], group: str | None = None) -> None:
        lines = ["job_step,job_step_function,job_step_command"] + [f"{n},{f},{c}" for n, f, c in steps]
        params: dict[str, Any] = {
            "job": name,
            "file_name": f"{name}.csv",
            "content": "\n".join(lines) + "\n",
            "force": True,
        }
        if group:
            params["group"] = group
        self.rpc("job.import", params)

    def wait_finished(self, names: list[str], run_ids: dict[str, str] | None = None, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        since = -1
        conn = self.connect()
        try:
            while time.monotonic() < deadline:
                reply = self.rpc("watch", {"names": names, "since": since, "wait": 10}, conn)
                since = reply["version"]
                runs = reply["runs"]
                if all(
                    r["status"] in ("Completed", "Failed", "Stopped")
                    and (run_ids is None or r["run_id"] == run_ids.get(r["job"]))
                    for r in runs
                ):
                    bad = [r for r in runs if r["status"] != "Completed"]
                    if bad:
                        raise RuntimeError(f"runs did not complete: {bad[:3]}")
                    return
        finally:
            conn.close()
        raise TimeoutError(f"runs of {names[:3]}… did not finish in {timeout} s")

    def rss_peak_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def daemon(extra: str = "") -> Iterator[Daemon]:
    home = Path(tempfile.mkdtemp(prefix="lmb-"))
    d = Daemon(home, extra)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- P1


def p1_step_overhead(runs: int) -> dict[str, Any]:
    """Runs and bash loops alternate, so a machine that slows down mid-benchmark (a noisy
    virtual machine) slows both sides alike; the ratio is the median of the per-pair ratios."""
    steps = 200

    def bash_loop() -> float:
        return timed(
            lambda: subprocess.run(["bash", "-c", f"for i in $(seq {steps}); do bash -c true; done"], check=True)
        )

    with daemon() as d:
        d.import_job("p1", [(i, "run_command", "true") for i in range(1, steps + 1)])

        def one_run() -> float:
            start = time.perf_counter()
            result = d.rpc("start", {"name": "p1"})
            d.wait_finished(["p1"], {"p1": result["results"][0]["run_id"]})
            return time.perf_counter() - start

        one_run()  # warm up
        bash_loop()
        pairs = [(one_run(), bash_loop()) for _ in range(runs * 2)]
    loadmgr = statistics.median(p[0] for p in pairs)
    baseline = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[0] / p[1] for p in pairs)
    return {
        "id": "P1",
        "name": f"step overhead ({steps} × true)",
        "value": loadmgr,
        "baseline": baseline,
        "ratio": ratio,
        "target": "≤ 1.2",
        "met": ratio <= 1.2,
        "detail": f"{loadmgr / steps * 1000:.2f} ms/step vs bash {baseline / steps * 1000:.2f} ms/step "
        f"(ratio of {len(pairs)} alternating pairs: {min(p[0] / p[1] for p in pairs):.2f}"
        f"–{max(p[0] / p[1] for p in pairs):.2f})",
    }


# ---------------------------------------------------------------------------- P2


def _run_quietly(argv: list[str]) -> float:
    return timed(lambda: subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def p2_client(runs: int) -> list[dict[str, Any]]:
    """``python3 -c pass``, ``supervisorctl status`` and both loadmgrctl commands are timed in
    rotation (both daemons up meanwhile), so a noisy machine slows every side alike."""
    with daemon() as d, _supervisord() as supervisorctl:
        d.import_job("p2", [(10, "run_command", "true")])
        d.rpc("start", {"name": "p2"})
        d.wait_finished(["p2"])
        ctl = [str(BIN / "loadmgrctl"), "--socket", str(d.socket)]
        commands: dict[str, list[str]] = {
            "pass": [PYTHON, "-c", "pass"],
            "loadmgrctl ping": [*ctl, "ping"],
            "loadmgrctl status JOB": [*ctl, "status", "p2"],
        }
        if supervisorctl is not None:
            commands["supervisorctl"] = supervisorctl
        for argv in commands.values():
            _run_quietly(argv)  # warm the page cache
        times: dict[str, list[float]] = {label: [] for label in commands}
        for _ in range(runs):
            for label, argv in commands.items():
                times[label].append(_run_quietly(argv))
    median = {label: statistics.median(values) for label, values in times.items()}
    pass_time = median["pass"]
    supervisor = median.get("supervisorctl")
    results = []
    for label in ("loadmgrctl ping", "loadmgrctl status JOB"):
        value = median[label]
        row = {
            "id": "P2",
            "name": label,
            "value": value,
            "baseline": pass_time,
            "ratio": value / pass_time,
            "target": "≤ 5 × python3 -c pass, < supervisorctl",
            "met": value / pass_time <= 5,
        }
        if supervisor is not None:
            row["vs_supervisorctl"] = value / supervisor
            row["met"] = row["met"] and value < supervisor
            row["detail"] = f"supervisorctl status: {supervisor * 1000:.0f} ms ({value / supervisor:.2f}×)"
        else:
            row["detail"] = "supervisor not installed: pip install supervisor"
        results.append(row)
    return results


@contextmanager
def _supervisord() -> Iterator[list[str] | None]:
    """A running supervisord with one program; yields the ``supervisorctl status`` command line."""
    supervisord = shutil.which("supervisord", path=str(BIN)) or shutil.which("supervisord")
    supervisorctl = shutil.which("supervisorctl", path=str(BIN)) or shutil.which("supervisorctl")
    if not supervisord or not supervisorctl:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="lmsup-"))
    conf = home / "supervisord.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [unix_http_server]
            file={home}/supervisor.sock
            [supervisord]
            logfile={home}/supervisord.log
            pidfile={home}/supervisord.pid
            nodaemon=true
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
            [supervisorctl]
            serverurl=unix://{home}/supervisor.sock
            [program:sleeper]
            command=sleep 3600
            """
        )
    )
    status = [supervisorctl, "-c", str(conf), "status"]
    proc = subprocess.Popen([supervisord, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # up once it answers (3: a program not yet RUNNING)
            if subprocess.run(status, check=False, capture_output=True).returncode in (0, 3):
                break
        yield status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------- P3


def p3_scale(quick: bool) -> list[dict[str, Any]]:
    jobs, steps = (50, 10) if quick else (200, 10)
    with daemon() as d:
        names = [f"s{i:03d}" for i in range(jobs)]
        for name in names:
            d.import_job(name, [(n, "run_command", "sleep 0.05") for n in range(1, steps + 1)], group="scale")
        idle_samples = [timed(lambda: d.rpc("listall")) for _ in range(20)]
        latencies: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                latencies.append(timed(lambda: d.rpc("listall")))

        started = time.perf_counter()
        d.rpc("start", {"name": "scale"})
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            d.wait_finished(["scale"], timeout=900)
        finally:
            stop.set()
            sampler.join()
        elapsed = time.perf_counter() - started
        peak = d.rss_peak_mb()
        # idle is sampled before and after the load, so drift of the machine meanwhile evens out
        idle_samples += [timed(lambda: d.rpc("listall")) for _ in range(20)]
    idle = statistics.median(idle_samples)
    loaded = statistics.median(latencies) if latencies else float("nan")
    return [
        {
            "id": "P3",
            "name": f"{jobs} jobs × {steps} steps, all complete",
            "value": elapsed,
            "baseline": steps * 0.05,
            "ratio": elapsed / (steps * 0.05),
            "target": "all complete",
            "met": True,
            "detail": f"{elapsed:.1f} s wall; each job's own steps take {steps * 0.05:.1f} s",
        },
        {
            "id": "P3",
            "name": "daemon peak RSS (MB)",
            "value": peak,
            "baseline": 150.0,
            "ratio": peak / 150.0,
            "target": "≤ 150 MB",
            "met": peak <= 150,
        },
        {
            "id": "P3",
            "name": "listall latency under load ÷ idle",
            "value": loaded,
            "baseline": idle,
            "ratio": loaded / idle,
            "target": "≤ 2",
            "met": loaded / idle <= 2,
            "detail": f"{loaded * 1000:.2f} ms vs {idle * 1000:.2f} ms idle ({len(latencies)} samples)",
        },
    ]


# ---------------------------------------------------------------------------- P4


def p4_event_latency(trials: int) -> dict[str, Any]:
    from datetime import datetime

    with daemon() as d:
        flag_dir = d.home / "flags"
        flag_dir.mkdir()
        flag = flag_dir / "go.flag"
        d.import_job("p4", [(10, "run_command", "true")])
        d.rpc("event.add", {"job": "p4", "event": "go", "item": str(flag)})
        latencies = []
        for _ in range(trials):
            result = d.rpc("start", {"name": "p4"})
            run_id = result["results"][0]["run_id"]
            conn = d.connect()
            since = -1
            while True:  # until the run is Waiting
                reply = d.rpc("watch", {"names": ["p4"], "since": since, "wait": 5}, conn)
                since = reply["version"]
                if reply["runs"][0]["status"] == "Waiting":
                    break
            conn.close()
            temporary = flag_dir / ".go.tmp"
            temporary.write_bytes(b"")
            created = time.time()
            os.rename(temporary, flag)
            d.wait_finished(["p4"], {"p4": run_id})
            status = d.rpc("status", {"job": "p4"})
            found = status["run"]["events"][0]["status_ts"]
            found_at = datetime.strptime(found, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=__import__("datetime").UTC)
            latencies.append(found_at.timestamp() - created)
    median = statistics.median(latencies)
    return {
        "id": "P4",
        "name": f"event latency (median of {trials})",
        "value": median,
        "baseline": 0.050,
        "ratio": median / 0.050,
        "target": "≤ 50 ms",
        "met": median <= 0.050,
        "detail": f"median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms",
    }


# ---------------------------------------------------------------------------- P5


def p5_repository(archived: int) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="lmb-"))
    d = Daemon(home)
    try:
        d.start()
        d.import_job("p5", [(10, "run_command", "true"), (20, "run_command", "true")])
        for i in range(30):
            d.import_job(f"other{i:02d}", [(10, "run_command", "true")])
        d.stop()
        _synthetic_history(d.database, archived)
        d.start()
        listall = statistics.median(timed(lambda: d.rpc("listall")) for _ in range(30))
        history = statistics.median(timed(lambda: d.rpc("history", {"job": "p5", "limit": 20})) for _ in range(30))
        ping = statistics.median(timed(lambda: d.rpc("ping")) for _ in range(30))
        size = sum(p.stat().st_size for p in d.database.parent.glob("loadmgr.db*"))
        d.stop()
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
    return [
        {
            "id": "P5",
            "name": f"listall with {archived:,} archived runs",
            "value": listall,
            "baseline": 0.050,
            "ratio": listall / 0.050,
            "target": "≤ 50 ms",
            "met": listall <= 0.050,
            "detail": f"{listall * 1000:.2f} ms (a ping round trip: {ping * 1000:.2f} ms)",
        },
        {
            "id": "P5",
            "name": "history JOB -n 20",
            "value": history,
            "baseline": 0.050,
            "ratio": history / 0.050,
            "target": "≤ 50 ms",
            "met": history <= 0.050,
            "detail": f"{history * 1000:.2f} ms; repository {size / 1e6:.1f} MB",
        },
    ]


def _synthetic_history(database: Path, count: int) -> None:
    """``count`` archived runs (with two steps each), spread over the jobs, most for job p5."""
    conn = sqlite3.connect(database)
    with conn:
        jobs = [r[0] for r in conn.execute("SELECT job_key FROM job ORDER BY job_key")]
        start = conn.execute("SELECT coalesce(max(run_key), 0) FROM job_run_hist").fetchone()[0] + 1
        ts = "2026-01-01T00:00:00.000000Z"
        runs, steps = [], []
        for i in range(count):
            key = start + i
            job = jobs[0] if i % 2 == 0 else jobs[i % len(jobs)]
            runs.append((key, f"{job}{i:012d}", job, "Completed", 10, 20, 20, ts, ts, 1.0, "/dev/null", ts))
            for step in (10, 20):
                steps.append((key, step, "run_command", "true", "Success", ts, ts, 0.5, 0, 1))
        conn.executemany(
            "INSERT INTO job_run_hist (run_key, run_id, job_key, status, start_step, end_step, last_completed_step, "
            "start_ts, end_ts, duration, log_file, archived_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        conn.executemany(
            "INSERT INTO job_run_step_hist (run_key, job_step, job_step_function, job_step_command, status, start_ts, "
            "end_ts, duration, exit_code, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            steps,
        )
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'job_run'", (start + count,))
    conn.close()


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and a smaller scale (a smoke test)")
    parser.add_argument("--only", help="comma-separated subset, e.g. P1,P4")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    runs = 3 if args.quick else 5
    chosen = set((args.only or "P1,P2,P3,P4,P5").upper().split(","))
    results: list[dict[str, Any]] = []
    if "P1" in chosen:
        results.append(p1_step_overhead(runs))
    if "P2" in chosen:
        results.extend(p2_client(runs * 2))
    if "P3" in chosen:
        results.extend(p3_scale(args.quick))
    if "P4" in chosen:
        results.append(p4_event_latency(15 if args.quick else 50))
    if "P5" in chosen:
        results.extend(p5_repository(20_000 if args.quick else 100_000))
    print(f"{'':4} {'benchmark':44} {'measured':>12} {'baseline':>12} {'ratio':>8}  {'target':30} met")
    for r in results:
        print(
            f"{r['id']:4} {r['name']:44} {r['value']:12.4f} {r['baseline']:12.4f} {r['ratio']:8.2f}  "
            f"{r['target']:30} {'yes' if r['met'] else 'NO'}"
        )
        if r.get("detail"):
            print(f"{'':5}{r['detail']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.json.write_text(json.dumps({"machine": machine, "quick": args.quick, "results": results}, indent=2))
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
