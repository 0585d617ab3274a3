"""Run agentcli loadtest and Locust against one `agentcli mock-llm` and print their figures next to the server's.

    python loadtests/compare/compare.py [--locust /tmp/locust/bin/locust] [--quick]

The mock server runs on CPU 0 and each generator on CPU 1 (``taskset``), so "one core" means one core. Before each
run the server's counters are reset (``POST /admin/reset``) and read afterwards (``GET /stats``), so every tool's
request count can be checked against what the server received. The stall experiment freezes the server with
SIGSTOP for 1 s in the middle of a paced run. Only the standard library is used; see docs/load-testing.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BODY = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
AGENTCLI = [sys.executable, "-c", "from agentcli.main import main; main()"]


def http(url: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class Server:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", *AGENTCLI, "mock-llm", "--port", str(port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            try:
                http(self.base + "/stats")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mock-llm did not start")

    def reset(self) -> None:
        http(self.base + "/admin/reset", b"{}")

    def requests(self) -> int:
        return int(http(self.base + "/stats")["requests"])

    def stall_later(self, after_s: float, stall_s: float) -> threading.Thread:
        def freeze() -> None:
            time.sleep(after_s)
            os.kill(self.proc.pid, signal.SIGSTOP)
            time.sleep(stall_s)
            os.kill(self.proc.pid, signal.SIGCONT)

        t = threading.Thread(target=freeze, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cpu_of(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run a command on CPU 1; (wall seconds, CPU seconds it used)."""
    before = os.times()
    t0 = time.perf_counter()
    subprocess.run(["taskset", "-c", "1", *cmd], env=env, cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    after = os.times()
    return time.perf_counter() - t0, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def agentcli(server: Server, shape: list[str], out: Path) -> dict[str, Any]:
    cmd = [*AGENTCLI, "loadtest", "--url", server.base + "/v1/chat/completions", "--payload", BODY, *shape,
           "--json", str(out)]  # fmt: skip
    wall, cpu = cpu_of(cmd, {**os.environ, "PYTHONPATH": str(ROOT)})
    rep = json.loads(out.read_text())
    run = rep["run"]
    lat = run["latency_ms"]["latency"]
    return {
        "tool": "agentcli " + " ".join(shape), "sent": run["started"], "ok": run["completed"],
        "errors": run["errors"], "dropped": run["dropped"], "rps": round(run["completed"] / rep["duration_s"], 1),
        "p50": lat.get("p50"), "p99": lat.get("p99"), "p999": lat.get("p999"), "max": lat.get("max"),
        "lag_p99": run["latency_ms"].get("lag", {}).get("p99"), "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
    }  # fmt: skip


def locust(server: Server, exe: str, users: int, seconds: int, per_user_rate: float, tmp: Path) -> dict[str, Any]:
    prefix = tmp / f"locust{users}_{per_user_rate}"
    cmd = [exe, "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(users), "-r", str(users), "-t",
           f"{seconds}s", "--host", server.base, "--csv", str(prefix), "--only-summary"]  # fmt: skip
    wall, cpu = cpu_of(cmd, {**os.environ, "PER_USER_RATE": str(per_user_rate)})
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "tool": f"locust -u {users}" + (f" constant_throughput({per_user_rate:g})" if per_user_rate else ""),
        "sent": int(row["Request Count"]), "ok": int(row["Request Count"]) - int(row["Failure Count"]),
        "errors": int(row["Failure Count"]), "dropped": None, "rps": round(float(row["Requests/s"]), 1),
        "p50": float(row["50%"]), "p99": float(row["99%"]), "p999": float(row["99.9%"]),
        "max": float(row["Max Response Time"]), "lag_p99": None, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--locust", default="/tmp/locust/bin/locust")
    ap.add_argument("--port", type=int, default=18089)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", choices=["rate", "stall"], default=None)
    args = ap.parse_args()
    s = args.seconds
    server = Server(args.port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            runs: list[tuple[str, Any]] = []
            if args.only in (None, "rate"):
                runs += [
                    ("rate", lambda: locust(server, args.locust, 50, s, 0, tmp)),
                    ("rate", lambda: agentcli(server, ["--vus", "50", "--duration", f"{s}s"], tmp / "c.json")),
                    *[
                        (
                            "rate",
                            lambda r=r: agentcli(
                                server, ["--rate", f"{r}/s", "--duration", f"{s}s"], tmp / f"o{r}.json"
                            ),
                        )  # fmt: skip
                        for r in (1000, 5000, 8000)
                    ],
                ]
            if args.only in (None, "stall"):
                stall_run = 2 * s
                runs += [
                    ("stall", lambda: locust(server, args.locust, 20, stall_run, 10.0, tmp)),
                    (
                        "stall",
                        lambda: agentcli(
                            server, ["--rate", "200/s", "--duration", f"{stall_run}s"], tmp / "stall.json"
                        ),
                    ),  # fmt: skip
                ]
            for kind, run in runs:
                server.reset()
                if kind == "stall":
                    server.stall_later(s * 0.8 + 2, 1.0)  # mid-run, after either tool's start-up
                row = run()
                row["server_requests"] = server.requests()
                row["experiment"] = kind
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.close()
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
