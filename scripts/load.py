#!/usr/bin/env python3
"""herder's load harness: every server configuration in turn, on one machine, in one
run, loaded with wrk in two shapes (keep-alive; a new connection per request), in
interleaved rounds.

    python3 scripts/load.py [--rounds 2] [--seconds 5] [--workers 2] [--connections 64]

It installs wrk and nginx-light if they are missing (Debian), builds the examples in
release mode, and binds only 127.0.0.1. It prints requests/s per round and their
medians, the ratio to nginx, latency percentiles, and the per-worker connection counts
of the herder servers (from their control socket) with max/min and Jain's fairness
index.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "target", "release", "examples")


def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("nginx-light", "nginx")) if not shutil.which(b) and not os.path.exists("/usr/sbin/" + b)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q"] + missing, check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "handoff_server",
                    "--example", "shared_listener_server"], cwd=ROOT, check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=20):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Herder:
    def __init__(self, name, example, extra, workers):
        self.name, self.example, self.extra, self.workers = name, example, extra, workers

    def start(self, tmp):
        self.ctl = os.path.join(tmp, self.name.replace(" ", "_") + ".sock")
        self.proc = subprocess.Popen(
            [os.path.join(EX, self.example), "--listen", "127.0.0.1:0", "--workers", str(self.workers),
             "--protocol", "http", "--log-level", "error", "--control", self.ctl] + self.extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        return int(line.strip().rsplit(":", 1)[1])

    def accepted(self):
        c = socket.socket(socket.AF_UNIX)
        c.connect(self.ctl)
        c.sendall(b'{"cmd":"status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        c.close()
        return [w["accepted"] for w in json.loads(data)["workers"]]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Nginx:
    name = "nginx"

    def __init__(self, workers):
        self.workers = workers

    def start(self, tmp):
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {self.workers};
pid {tmp}/nginx.pid;
error_log /dev/null crit;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ default_type text/plain; return 200 "Hello, world!"; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def accepted(self):
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=60)


class Node:
    def __init__(self, policy, workers):
        self.policy, self.workers = policy, workers
        self.name = f"node cluster {policy}"

    def start(self, tmp):
        port = free_port()
        js = os.path.join(tmp, "cluster.js")
        with open(js, "w") as f:
            f.write(f"""const cluster = require('cluster'); const http = require('http');
cluster.schedulingPolicy = cluster.{'SCHED_RR' if self.policy == 'rr' else 'SCHED_NONE'};
if (cluster.isPrimary) {{ for (let i = 0; i < {self.workers}; i++) cluster.fork(); }}
else {{ http.createServer((q, s) => {{ s.writeHead(200, {{'Content-Type': 'text/plain'}}); s.end('Hello, world!'); }})
  .listen({port}, '127.0.0.1'); }}
""")
        self.proc = subprocess.Popen(["node", js], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def accepted(self):
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk(port, seconds, connections, close):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, lat, errors.group(1) if errors else ""


def fairness(counts):
    if not counts or min(counts) == 0:
        return float("inf"), 0.0
    jain = sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))
    return max(counts) / min(counts), jain


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--only", action="append", default=[],
                    help="run only the servers whose name contains this (repeatable); nginx is always run")
    a = ap.parse_args()
    ensure_tools()
    w = a.workers
    servers = [
        Herder("handoff least-loaded", "handoff_server", ["--dispatch", "least-loaded"], w),
        Herder("handoff round-robin", "handoff_server", ["--dispatch", "round-robin"], w),
        Herder("shared reuseport", "shared_listener_server", ["--accept", "reuseport"], w),
        Herder("shared exclusive", "shared_listener_server", ["--accept", "exclusive"], w),
        Herder("shared flock", "shared_listener_server", ["--accept", "flock"], w),
        Herder("shared fcntl", "shared_listener_server", ["--accept", "fcntl"], w),
        Herder("shared pthread", "shared_listener_server", ["--accept", "pthread"], w),
        Herder("shared none", "shared_listener_server", ["--accept", "none"], w),
        Nginx(w),
        Node("rr", w),
        Node("none", w),
    ]
    if a.only:
        servers = [s for s in servers if s.name == "nginx" or any(o in s.name for o in a.only)]
    results = {}  # (server, shape) -> list of (rps, lat, errors, counts)
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for shape in ("keep-alive", "close"):
                for s in servers:
                    port = s.start(tmp)
                    before = s.accepted()
                    rps, lat, err = wrk(port, a.seconds, a.connections, shape == "close")
                    after = s.accepted()
                    counts = [y - x for x, y in zip(before, after)] if before and after and len(before) == len(after) else None
                    s.stop()
                    results.setdefault((s.name, shape), []).append((rps, lat, err, counts))
                    print(f"round {rnd + 1} {shape:10} {s.name:22} {rps:10.0f} req/s  p50 {lat.get('50', '?'):>8} p99 {lat.get('99', '?'):>8}"
                          + (f"  per worker {counts}" if counts else "") + (f"  errors: {err}" if err else ""), flush=True)
    print()
    print(f"{'shape':10} {'server':22} {'median req/s':>12} {'vs nginx':>9} {'max/min':>8} {'Jain':>6}")
    for shape in ("keep-alive", "close"):
        nginx = [r[0] for r in results[("nginx", shape)]]
        for s in servers:
            runs = results[(s.name, shape)]
            med = statistics.median(r[0] for r in runs)
            ratios = [r[0] / n for r, n in zip(runs, nginx)]
            counts = [sum(c) for c in zip(*[r[3] for r in runs if r[3]])] if runs[0][3] else None
            mm, jain = fairness(counts) if counts else (None, None)
            print(f"{shape:10} {s.name:22} {med:12.0f} {statistics.median(ratios):8.2f}x"
                  + (f" {mm:8.2f} {jain:6.3f}" if counts else ""))


if __name__ == "__main__":
    main()
