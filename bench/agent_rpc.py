"""Agent RPC benchmark: start-up to the first answered Check, idle RSS, unary Check latency.

Starts ``python3 -m agent --server-addr unix://TMP`` RUNS times and measures the wall time from spawn to
the first ttrpc Check answered SERVING (median, p90). On the last agent it reads VmRSS once idle after
start and again after the first gRPC call (the agent imports its HTTP/2 server, agent/rpc/h2grpc.py, on
the first gRPC connection), and measures Check latency p50/p99 over ttrpc and over gRPC with 1 and 8
concurrent clients (one connection per client; clients are threads of this process, so their own Python
cost is part of the figure).
``PYKATA_BENCH_RUNS`` sets the number of starts (default 10), ``PYKATA_BENCH_CALLS`` the calls per
client (default 400).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.system.children import stop

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("PYKATA_BENCH_RUNS", "10"))
CALLS = int(os.environ.get("PYKATA_BENCH_CALLS", "400"))
TARGET_FIRST_CHECK_MS = 150.0
TARGET_IDLE_RSS_MIB = 30.0


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ttrpc_check(path: str) -> bool:
    from agent.rpc.pb import health_pb2
    from agent.rpc.ttrpc import TtrpcClientConnection

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return False
    connection = TtrpcClientConnection(sock)
    try:
        payload = connection.call("grpc.Health", "Check", b"", timeout=5)
        return health_pb2.HealthCheckResponse.FromString(payload).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        connection.close()


def _spawn(path: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "--server-addr", f"unix://{path}", "--log", "warning"],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )


def spawn_to_exit(code: str) -> float:
    """ms from spawn to exit of ``python -c code``: the part of start-up that is not the agent's."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    return (time.perf_counter() - started) * 1000


def time_to_first_check(path: str) -> tuple[float, subprocess.Popen[bytes]]:
    started = time.perf_counter()
    process = _spawn(path)
    while not _ttrpc_check(path):
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with status {process.returncode} before answering")
        time.sleep(0.001)
    return (time.perf_counter() - started) * 1000, process


def latency(make_call: Callable[[], Callable[[], None]], clients: int, calls: int) -> list[float]:
    """Per-call latencies in ms with ``clients`` concurrent clients, each on its own connection."""
    samples: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        call = make_call()
        for _ in range(20):  # warm-up
            call()
        barrier.wait()
        for _ in range(calls):
            began = time.perf_counter()
            call()
            samples[index].append((time.perf_counter() - began) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [value for chunk in samples for value in chunk]


def main() -> None:
    from agent.rpc.pb import health_pb2
    from agentctl.client import connect

    bare_python: list[float] = []
    with_protobuf: list[float] = []
    workdir = tempfile.mkdtemp(prefix="pk-bench-", dir="/tmp")
    path = f"{workdir}/agent.sock"
    starts: list[float] = []
    process = None
    try:
        for run in range(RUNS):  # interleaved, so a busy machine weighs on every figure alike
            bare_python.append(spawn_to_exit("pass"))
            with_protobuf.append(spawn_to_exit("import agent.rpc.pb.ttrpc_pb2, logging, socket, threading"))
            elapsed, process = time_to_first_check(path)
            starts.append(elapsed)
            if run < RUNS - 1:
                stop(process)
        assert process is not None
        time.sleep(1.0)
        idle_rss = _rss_mib(process.pid)
        clients_to_close = []

        def ttrpc_call() -> Callable[[], None]:
            client = connect(f"unix://{path}", "ttrpc", timeout=10)
            clients_to_close.append(client)
            request = health_pb2.CheckRequest()

            def call() -> None:
                client.call("grpc.Health/Check", request)

            return call

        def grpc_call() -> Callable[[], None]:
            client = connect(f"unix://{path}", "grpc", timeout=10)
            clients_to_close.append(client)
            request = health_pb2.CheckRequest()

            def call() -> None:
                client.call("grpc.Health/Check", request)

            return call

        first_grpc = grpc_call()
        first_grpc()
        time.sleep(1.0)
        grpc_rss = _rss_mib(process.pid)
        rows = []
        for label, factory in (("ttrpc", ttrpc_call), ("gRPC", grpc_call)):
            for clients in (1, 8):
                samples = latency(factory, clients, CALLS)
                rows.append((f"Check over {label}, {clients} client(s)", samples))
        for client in clients_to_close:
            client.close()
    finally:
        if process is not None and process.poll() is None:
            stop(process)
        for leftover in Path(workdir).glob("*"):
            leftover.unlink()
        os.rmdir(workdir)

    load1 = os.getloadavg()[0]
    print(
        f"agent RPC benchmark ({RUNS} starts, {CALLS} calls per client; python {sys.version.split()[0]}; "
        f"load average {load1:.2f} on {os.cpu_count()} CPUs)"
    )
    print(f"{'figure':<40}{'measured':>22}{'target':>14}")
    print(
        f"{'spawn to first ttrpc Check (median)':<40}{statistics.median(starts):>19.1f} ms"
        f"{'< ' + str(int(TARGET_FIRST_CHECK_MS)) + ' ms':>14}"
    )
    print(f"{'spawn to first ttrpc Check (p90)':<40}{_percentile(starts, 0.9):>19.1f} ms{'':>14}")
    print(f"{'  floor: python -c pass (median)':<40}{statistics.median(bare_python):>19.1f} ms{'':>14}")
    print(f"{'  floor: + protobuf, logging, socket':<40}{statistics.median(with_protobuf):>19.1f} ms{'':>14}")
    print(f"{'idle RSS after start':<40}{idle_rss:>18.1f} MiB{'<= 30 MiB':>14}")
    print(f"{'RSS after first gRPC call':<40}{grpc_rss:>18.1f} MiB{'':>14}")
    for label, samples in rows:
        p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
        print(f"{label + ' p50/p99':<40}{p50:>9.3f} / {p99:>6.3f} ms{'':>14}")


if __name__ == "__main__":
    main()
