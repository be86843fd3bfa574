#!/usr/bin/env python3
"""herder's load harness: every server configuration in turn, on one machine, in one
run, loaded with wrk in two shapes (keep-alive; a new connection per request), in
interleaved rounds.

    python3 scripts/load.py [--rounds 2] [--seconds 5] [--workers 2] [--connections 64] [--threads 2]

It installs wrk, nginx-light, strace and gcc if they are missing (Debian), builds the
examples in release mode and the C peers with cc, and binds only 127.0.0.1. Every run of a server is paired with an nginx
run right before or after it (alternating), and compared with that run only. It prints
requests/s per round and their medians, the median ratio to nginx, latency
percentiles, and the per-worker connection counts of the herder servers (from their
control socket) with max/min and Jain's fairness index, and the CPU time every process
of each server spent per request (from /proc/PID/stat; the supervisor's or listener
process's share apart); then the respawn time after kill -9, the failed requests
across rolling restarts under load, and the system calls one worker makes per new
connection and per keep-alive request (strace -c on a 1-worker server, --syscalls
seconds per shape). With --charts DIR it also writes throughput.svg, fairness.svg and
results.json there.

Besides herder's servers: nginx (with and without `deferred`), Node's cluster, and the
two designs in C from benches/peers/ (a hand-off server in the seed article's shape,
an SO_REUSEPORT server), built here with cc.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "target", "release", "examples")


PEERS = os.path.join(ROOT, "target", "peers")


def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("nginx-light", "nginx"), ("strace", "strace"), ("gcc", "cc"))
               if not shutil.which(b) and not os.path.exists("/usr/sbin/" + b)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q"] + missing, check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "handoff_server",
                    "--example", "shared_listener_server"], cwd=ROOT, check=True)
    os.makedirs(PEERS, exist_ok=True)
    src = os.path.join(ROOT, "benches", "peers")
    for name in ("handoff", "reuseport"):
        subprocess.run(["cc", "-O2", "-Wall", "-o", os.path.join(PEERS, name), os.path.join(src, name + ".c")],
                       check=True)


def children(pid):
    """The live (not zombie) processes whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def cpu_seconds(pid):
    """User plus system CPU time of `pid` (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_children(proc, n, limit=20):
    """Waits until `proc` has `n` live children (its workers)."""
    deadline = time.time() + limit
    while len(children(proc.pid)) < n:
        if time.time() > deadline:
            raise RuntimeError(f"pid {proc.pid} has not started its {n} workers")
        time.sleep(0.02)


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

    def with_workers(self, n):
        return Herder(self.name, self.example, self.extra, n)

    def start(self, tmp):
        self.ctl = os.path.join(tmp, self.name.replace(" ", "_") + ".sock")
        self.proc = subprocess.Popen(
            [os.path.join(EX, self.example), "--listen", "127.0.0.1:0", "--workers", str(self.workers),
             "--protocol", "http", "--log-level", "error", "--control", self.ctl] + self.extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        return int(line.strip().rsplit(":", 1)[1])

    def control(self, cmd):
        c = socket.socket(socket.AF_UNIX)
        c.connect(self.ctl)
        c.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        c.close()
        return json.loads(data)

    def accepted(self):
        return [w["accepted"] for w in self.control("status")["workers"]]

    def respawn(self, kills, tmp):
        """Measures kill -9 of a worker until its slot shows a new worker ready,
        polling status every millisecond. Each kill is a slot's first crash (a fresh
        server for each round over the slots): consecutive crashes of one slot back
        off on purpose."""
        times = []
        while len(times) < kills:
            self.start(tmp)
            for slot in range(self.workers):
                if len(times) == kills:
                    break
                old = self.control("status")["workers"][slot]["pid"]
                t0 = time.perf_counter()
                os.kill(old, signal.SIGKILL)
                while True:
                    w = self.control("status")["workers"][slot]
                    if w["pid"] != old and w["state"] == "ready":
                        break
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"{self.name}: slot {slot} not back in 30 s")
                    time.sleep(0.001)
                times.append((time.perf_counter() - t0) * 1000)
            self.stop()
        return times

    def reload(self):
        self.control("reload")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Peer:
    """A server other than herder's: no control socket, stopped by a signal."""
    stop_signal = signal.SIGTERM

    def accepted(self):
        return None

    def stop(self):
        self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Nginx(Peer):
    stop_signal = signal.SIGQUIT

    def __init__(self, workers, deferred=False):
        self.workers, self.deferred = workers, deferred
        self.name = "nginx deferred" if deferred else "nginx"

    def with_workers(self, n):
        return Nginx(n, self.deferred)

    def start(self, tmp):
        port = free_port()
        conf = os.path.join(tmp, self.name.replace(" ", "_") + ".conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {self.workers};
pid {tmp}/{self.name.replace(" ", "_")}.pid;
error_log /dev/null crit;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport{' deferred' if self.deferred else ''};
    location / {{ default_type text/plain; return 200 "Hello, world!"; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        wait_children(self.proc, self.workers)  # the master listens before it forks them
        return port

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)


class CPeer(Peer):
    """A server from benches/peers/, built by ensure_tools: `PROGRAM PORT WORKERS`."""

    def __init__(self, name, program, workers):
        self.name, self.program, self.workers = name, program, workers

    def with_workers(self, n):
        return CPeer(self.name, self.program, n)

    def start(self, tmp):
        port = free_port()
        self.proc = subprocess.Popen([os.path.join(PEERS, self.program), str(port), str(self.workers)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_children(self.proc, self.workers)
        wait_port(port)
        return port


class Node(Peer):
    def __init__(self, policy, workers):
        self.policy, self.workers = policy, workers
        self.name = f"node cluster {policy}"

    def with_workers(self, n):
        return Node(self.policy, n)

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
        wait_children(self.proc, self.workers)
        wait_port(port)
        return port


THREADS = 2  # wrk's threads (--threads)


def wrk_cmd(port, seconds, connections, close):
    cmd = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    return cmd


def wrk_parse(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, lat, errors.group(1) if errors else ""


def wrk(port, seconds, connections, close):
    out = subprocess.run(wrk_cmd(port, seconds, connections, close), capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    return wrk_parse(out) + (int(re.search(r"(\d+) requests in", out).group(1)),)


def syscalls(server, tmp, seconds, close):
    """System calls per request of the only worker of `server` (started with one),
    counted by strace -c while wrk -t1 -c20 runs: total, and the six commonest."""
    port = server.start(tmp)
    worker = children(server.proc.pid)
    if len(worker) != 1:
        server.stop()
        raise RuntimeError(f"{server.name}: {len(worker)} workers where one was asked for")
    out = os.path.join(tmp, f"strace-{server.name.replace(' ', '_')}-{'close' if close else 'ka'}.txt")
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(worker[0]), "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    cmd = ["wrk", "-t1", "-c20", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    report = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    st.send_signal(signal.SIGINT)
    err = st.communicate(timeout=30)[1]
    server.stop()
    if not os.path.exists(out):
        raise RuntimeError(f"strace wrote nothing for {server.name}: {err.strip()}")
    requests = int(re.search(r"(\d+) requests in", report).group(1))
    if requests == 0:
        raise RuntimeError(f"{server.name}: no request served while its system calls were counted")
    calls = {}
    with open(out) as f:
        for line in f:
            t = line.split()
            if len(t) >= 5 and t[0][0].isdigit() and t[-1] != "total":
                calls[t[-1]] = int(t[3])
    if not calls:
        raise RuntimeError(f"strace counted no system call of {server.name}: {err.strip()}")
    total = sum(calls.values()) / requests
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return total, [(name, n / requests) for name, n in top]


def failures(out):
    """Requests, failed connections and non-2xx answers in a wrk report."""
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(x) for x in errs.groups()) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return total, failed, int(non2xx.group(1)) if non2xx else 0


def reload_under_load(server, tmp, seconds, connections, reloads):
    """Rolling restarts while wrk opens a new connection per request: how many
    requests failed."""
    port = server.start(tmp)
    w = subprocess.Popen(wrk_cmd(port, seconds, connections, True), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    gap = (seconds - 1.0) / reloads
    for _ in range(reloads):
        server.reload()
        time.sleep(gap)
    out = w.communicate(timeout=seconds + 60)[0]
    server.stop()
    return failures(out)


def svg_bars(path, title, rows, series, fmt, mark=None):
    """A horizontal bar chart: `rows` of (label, [value per series]), each value
    written with `fmt`; `mark` draws a reference line at that value."""
    colours = ["#4878a8", "#e0904a", "#6aa860", "#c85a5a", "#8c6bb1", "#999999"]
    top = max((max(v) for _, v in rows), default=1) or 1
    bar, gap, left, width = 14, 10, 190, 420
    height = 50 + len(rows) * (len(series) * bar + gap) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    for i, name in enumerate(series):
        out.append(f'<rect x="{left + i * 120}" y="30" width="10" height="10" fill="{colours[i]}"/>'
                   f'<text x="{left + i * 120 + 14}" y="39">{name}</text>')
    y = 50
    for label, values in rows:
        out.append(f'<text x="{left - 6}" y="{y + len(series) * bar / 2 + 4}" text-anchor="end">{label}</text>')
        for i, v in enumerate(values):
            w = width * v / top
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{colours[i]}"/>'
                       f'<text x="{left + w + 4:.1f}" y="{y + bar - 4}">{fmt.format(v)}</text>')
            y += bar
        y += gap
    if mark is not None:
        x = left + width * mark / top
        out.append(f'<line x1="{x:.1f}" y1="46" x2="{x:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def svg_shares(path, title, rows):
    """Per-worker connection shares: one 100 % stacked bar per (label, counts)."""
    colours = ["#4878a8", "#e0904a", "#6aa860", "#c85a5a", "#8c6bb1", "#999999", "#d4b84a", "#5ab4c8"]
    bar, left, width = 18, 230, 400
    height = 40 + len(rows) * (bar + 6) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    y = 36
    for label, counts in rows:
        total = sum(counts) or 1
        out.append(f'<text x="{left - 6}" y="{y + bar - 5}" text-anchor="end">{label}</text>')
        x = left
        for i, c in enumerate(counts):
            w = width * c / total
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colours[i % len(colours)]}" '
                       f'stroke="white"/>')
            if w > 28:
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + bar - 5}" text-anchor="middle" fill="white">'
                           f'{100 * c / total:.0f}%</text>')
            x += w
        mm = max(counts) / min(counts) if min(counts) else float("inf")
        out.append(f'<text x="{left + width + 6}" y="{y + bar - 5}">max/min {mm:.2f}</text>')
        y += bar + 6
    out.append(f'<text x="{left}" y="{y + 16}" fill="#555">each colour is one worker\'s share of the '
               f'connections it accepted</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


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
    ap.add_argument("--threads", type=int, default=2,
                    help="wrk's threads: with 1, wrk keeps to about one core and leaves the servers the "
                         "other, as the peers harness does; with 2 the servers get fewer, longer turns and "
                         "batch more")
    ap.add_argument("--kills", type=int, default=10, help="respawn measurements per herder server")
    ap.add_argument("--reloads", type=int, default=3, help="rolling restarts under load per server")
    ap.add_argument("--syscalls", type=int, default=2,
                    help="seconds per shape of the system-call count of each server's one worker (0: none)")
    ap.add_argument("--charts", help="write the SVG charts and a JSON of the results into this directory")
    ap.add_argument("--only", action="append", default=[],
                    help="run only the servers whose name contains this (repeatable); nginx is always run")
    ap.add_argument("--replot", metavar="DIR", help="only redraw the charts from DIR/results.json")
    a = ap.parse_args()
    if a.replot:
        with open(os.path.join(a.replot, "results.json")) as f:
            saved = json.load(f)
        names = list(dict.fromkeys(x["server"] for x in saved["summary"]))
        charts(a.replot, saved["summary"], names, argparse.Namespace(**saved["args"]))
        return
    ensure_tools()
    global THREADS
    THREADS = a.threads
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
        Herder("handoff deferred", "handoff_server", ["--defer-accept"], w),
        Herder("shared exclusive deferred", "shared_listener_server", ["--accept", "exclusive", "--defer-accept"], w),
        Nginx(w),
        Nginx(w, deferred=True),
        CPeer("C handoff", "handoff", w),
        CPeer("C reuseport", "reuseport", w),
        Node("rr", w),
        Node("none", w),
    ]
    if a.only:
        servers = [s for s in servers if s.name == "nginx" or any(o in s.name for o in a.only)]
    results = {}  # (server, shape) -> list of (rps, lat, errors, counts)
    respawn = {}  # server -> [ms]
    reloads = {}  # server -> (requests, failed, non2xx)
    ratios = {}  # (server, shape) -> [ratio to the nginx run next to it]
    cpu_ratios = {}  # (server, shape) -> [CPU per request as a ratio to that nginx run's]
    calls = {}  # (server, shape) -> (per request, [(syscall, per request)])
    nginx = next(s for s in servers if s.name == "nginx")

    def measure(s, shape, rnd, tmp):
        port = s.start(tmp)
        before = s.accepted()
        procs = [s.proc.pid] + children(s.proc.pid)
        cpu0 = [cpu_seconds(p) for p in procs]
        rps, lat, err, requests = wrk(port, a.seconds, a.connections, shape == "close")
        cpu1 = [cpu_seconds(p) for p in procs]
        after = s.accepted()
        counts = [y - x for x, y in zip(before, after)] if before and after and len(before) == len(after) else None
        s.stop()
        spent = [(y - x) * 1e6 / max(requests, 1) for x, y in zip(cpu0, cpu1)]
        cpu, top = sum(spent), spent[0]
        results.setdefault((s.name, shape), []).append((rps, lat, err, counts, cpu, top))
        print(f"round {rnd + 1} {shape:10} {s.name:26} {rps:10.0f} req/s  p50 {lat.get('50', '?'):>8} p99 {lat.get('99', '?'):>8}"
              f"  CPU {cpu:5.1f} µs/req ({top:4.1f} parent)"
              + (f"  per worker {counts}" if counts else "") + (f"  errors: {err}" if err else ""), flush=True)
        return rps, cpu

    with tempfile.TemporaryDirectory() as tmp:
        # Each server runs right next to an nginx run (before it in one round, after
        # it in the next), and is compared with that run: the machine's drift over
        # minutes does not enter the ratios.
        for rnd in range(a.rounds):
            for shape in ("keep-alive", "close"):
                for i, s in enumerate(x for x in servers if x is not nginx):
                    if (rnd + i) % 2 == 0:
                        base, base_cpu = measure(nginx, shape, rnd, tmp)
                        rps, cpu = measure(s, shape, rnd, tmp)
                    else:
                        rps, cpu = measure(s, shape, rnd, tmp)
                        base, base_cpu = measure(nginx, shape, rnd, tmp)
                    ratios.setdefault((s.name, shape), []).append(rps / base)
                    ratios.setdefault((nginx.name, shape), []).append(1.0)
                    cpu_ratios.setdefault((s.name, shape), []).append(cpu / base_cpu if base_cpu else float("nan"))
                    cpu_ratios.setdefault((nginx.name, shape), []).append(1.0)
        for s in servers:
            if isinstance(s, Herder) and a.kills:
                respawn[s.name] = s.respawn(a.kills, tmp)
                t = respawn[s.name]
                print(f"respawn {s.name:22} median {statistics.median(t):6.1f} ms  max {max(t):6.1f} ms", flush=True)
        for s in servers:
            if hasattr(s, "reload") and a.reloads:
                reloads[s.name] = reload_under_load(s, tmp, a.seconds + 2, a.connections, a.reloads)
                total, failed, non2xx = reloads[s.name]
                print(f"reload  {s.name:22} {a.reloads} rolling restarts: {total} requests, {failed} failed, "
                      f"{non2xx} non-2xx", flush=True)

        for s in servers if a.syscalls else []:
            for shape in ("close", "keep-alive"):
                calls[(s.name, shape)] = syscalls(s.with_workers(1), tmp, a.syscalls, shape == "close")
                total, top = calls[(s.name, shape)]
                print(f"syscalls {shape:10} {s.name:26} {total:5.2f} per request: "
                      + ", ".join(f"{n} {c:.2f}" for n, c in top), flush=True)

    print()
    print("| shape | server | req/s (median) | vs nginx | p50 | p99 | per-worker max/min | Jain "
          "| CPU µs/req (parent) | CPU vs nginx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for shape in ("keep-alive", "close"):
        for s in servers:
            runs = results[(s.name, shape)]
            med = statistics.median(r[0] for r in runs)
            paired = ratios[(s.name, shape)]
            counts = [sum(c) for c in zip(*[r[3] for r in runs if r[3]])] if runs[0][3] else None
            mm, jain = fairness(counts) if counts else (None, None)
            mid = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            cpu = statistics.median(r[4] for r in runs)
            top = statistics.median(r[5] for r in runs)
            cpu_ratio = statistics.median(cpu_ratios[(s.name, shape)])
            summary.append({"shape": shape, "server": s.name, "rps": med, "ratios": paired,
                            "p50": mid[1].get("50"), "p99": mid[1].get("99"), "counts": counts,
                            "cpu_us": cpu, "parent_cpu_us": top, "cpu_ratios": cpu_ratios[(s.name, shape)],
                            "syscalls": calls.get((s.name, shape))})
            shown = paired if s is not nginx else []
            print(f"| {shape} | {s.name} | {med:,.0f} | {statistics.median(paired):.2f}× "
                  + (f"({' / '.join(f'{r:.2f}' for r in shown)})" if shown else "")
                  + f" | {mid[1].get('50', '?')} | {mid[1].get('99', '?')} | "
                  + (f"{mm:.2f} | {jain:.3f} |" if counts else " | |")
                  + f" {cpu:.1f} ({top:.1f}) | {cpu_ratio:.2f}× |")
    if calls:
        print()
        print("| server | system calls per new connection | per keep-alive request | commonest, new connection |")
        print("|---|---|---|---|")
        for s in servers:
            close, ka = calls[(s.name, "close")], calls[(s.name, "keep-alive")]
            print(f"| {s.name} | {close[0]:.2f} | {ka[0]:.2f} | "
                  + ", ".join(f"{n} {c:.2f}" for n, c in close[1]) + " |")
    if respawn:
        print()
        print("| server | respawn median | max |")
        print("|---|---|---|")
        for name, t in respawn.items():
            print(f"| {name} | {statistics.median(t):.1f} ms | {max(t):.1f} ms |")
    if reloads:
        print()
        print("| server | rolling restarts | requests | failed connections | non-2xx |")
        print("|---|---|---|---|---|")
        for name, (total, failed, non2xx) in reloads.items():
            print(f"| {name} | {a.reloads} | {total:,} | {failed} | {non2xx} |")
    if a.charts:
        os.makedirs(a.charts, exist_ok=True)
        with open(os.path.join(a.charts, "results.json"), "w") as f:
            json.dump({"args": vars(a), "summary": summary, "respawn_ms": respawn,
                       "reloads": reloads}, f, indent=1)
        charts(a.charts, summary, [s.name for s in servers], a)
        print(f"\ncharts and results in {a.charts}")


def charts(directory, summary, names, a):
    """Draws throughput.svg (each server's requests/s as a ratio to the nginx run next
    to it) and fairness.svg (per-worker shares) from the summary."""
    def pick(n, sh):
        return next(x for x in summary if x["server"] == n and x["shape"] == sh)
    svg_bars(os.path.join(directory, "throughput.svg"),
             f"Requests/s relative to nginx, {a.workers} workers, {a.connections} connections "
             f"(median of {a.rounds} paired rounds)",
             [(n, [statistics.median(pick(n, sh)["ratios"]) for sh in ("keep-alive", "close")]) for n in names],
             ["keep-alive", "Connection: close"], "{:.2f}×", mark=1.0)
    shares = [(f"{x['server']} ({x['shape']})", x["counts"]) for x in summary if x["counts"]]
    svg_shares(os.path.join(directory, "fairness.svg"),
               f"Per-worker share of connections, {a.workers} workers", shares)


if __name__ == "__main__":
    main()
