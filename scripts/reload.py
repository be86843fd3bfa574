#!/usr/bin/env python3
"""What a reload costs the clients: herder's servers against nginx, side by side.

    python3 scripts/reload.py [--connections 10000] [--busy 1000] [--rounds 3]

Each server (nginx, the hand-off server, the shared-listener server; HTTP, 2 workers)
gets `--connections` keep-alive connections. `--busy` of them send a request every
100 ms; the rest made one request and sit between requests, as browsers' and proxies'
pooled connections do. Then the server is reloaded (SIGHUP) while the busy ones go on,
and the script reports:

  * old generation: how long from SIGHUP until the last old worker exited;
  * closed: connections the client saw closed (end of file or reset) by the end of the
    observation — every connection makes one last request then, so a connection the
    server closed while idle is found too;
  * failed: requests sent and never answered (written to a connection being closed).

nginx 1.22 closes idle keep-alive connections at a reload and finishes busy ones with
`Connection: close`; herder's servers move every connection to the new workers.
Rounds alternate the servers; the medians are printed. Binds only 127.0.0.1, starts
and signals only its own processes. Needs nginx (nginx-light) and a release build.
"""
import argparse, os, resource, selectors, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import children, free_port  # noqa: E402  (the project's harness, beside this one)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "target", "release", "examples")
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

NGINX_CONF = """
worker_processes 2;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    keepalive_timeout 300;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location / {{ return 200 "Hello, world!"; }}
    }}
}}
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start(kind, tmp):
    port = free_port()
    if kind == "nginx":
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=tmp, port=port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = subprocess.Popen([nginx, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")],
                                stderr=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen([os.path.join(EX, kind), "--listen", f"127.0.0.1:{port}",
                                 "--workers", "2", "--protocol", "http", "--log-level", "warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"{kind} did not start")
            time.sleep(0.05)
    while len(children(proc.pid)) < 2:
        time.sleep(0.05)
    return proc, port


class Conn:
    __slots__ = ("sock", "buf", "waiting", "closed", "busy", "sent_at")

    def __init__(self, sock, busy):
        self.sock, self.buf, self.waiting, self.closed, self.busy = sock, b"", False, False, busy
        self.sent_at = 0.0


def response_len(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    n = int(head[i + 15:].split(b"\r\n")[0]) if i >= 0 else 0
    return end + 4 + n if len(buf) >= end + 4 + n else None


def run(kind, n, busy, observe):
    tmp = tempfile.mkdtemp(prefix="herder-reload-")
    proc, port = start(kind, tmp)
    sel = selectors.EpollSelector()
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn(s, i < busy)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    failed = 0

    def send(c):
        nonlocal failed
        try:
            c.sock.send(REQUEST)
            c.waiting, c.sent_at = True, time.time()
        except OSError:
            failed += 1
            close(c)

    def close(c):
        if not c.closed:
            c.closed = True
            sel.unregister(c.sock)
            c.sock.close()

    def pump(until, tick=None):
        nonlocal failed
        next_tick = time.time()
        while time.time() < until:
            if tick and time.time() >= next_tick:
                tick()
                next_tick += 0.1
            for key, _ in sel.select(timeout=0.01):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    if c.waiting:
                        failed += 1
                    close(c)
                    continue
                c.buf += data
                m = response_len(c.buf)
                if m is not None:
                    if c.buf[:12] != b"HTTP/1.1 200":
                        failed += 1
                    c.buf, c.waiting = c.buf[m:], False

    def busy_tick():
        for c in conns:
            if c.busy and not c.closed and not c.waiting:
                send(c)

    # Every connection makes one request; then the busy ones go on.
    for c in conns:
        send(c)
    pump(time.time() + 2)
    assert all(not c.waiting for c in conns if not c.closed), "warm-up requests unanswered"
    old = children(proc.pid)
    t0 = time.time()
    os.kill(proc.pid, signal.SIGHUP)
    gone_at = None
    end = t0 + observe
    while time.time() < end:
        pump(min(end, time.time() + 0.05), busy_tick)
        if gone_at is None and not any(alive(p) for p in old):
            gone_at = time.time() - t0
    # A last request on every connection still open finds those closed while idle.
    pump(time.time() + 1)
    for c in conns:
        if not c.closed and not c.waiting:
            send(c)
    pump(time.time() + 3)
    failed += sum(1 for c in conns if c.waiting and not c.closed)
    closed = sum(1 for c in conns if c.closed)
    for c in conns:
        close(c)
    proc.send_signal(signal.SIGTERM if kind != "nginx" else signal.SIGQUIT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    return gone_at, closed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--busy", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--observe", type=float, default=10.0, help="seconds after SIGHUP")
    ap.add_argument("--servers", default="nginx,handoff_server,shared_listener_server")
    args = ap.parse_args()
    need = args.connections * 3 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, need)), hard))
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "handoff_server",
                    "--example", "shared_listener_server"], cwd=ROOT, check=True)
    servers = args.servers.split(",")
    results = {s: [] for s in servers}
    for r in range(args.rounds):
        for s in (servers if r % 2 == 0 else servers[::-1]):
            gone, closed, failed = run(s, args.connections, args.busy, args.observe)
            results[s].append((gone, closed, failed))
            shown = f"{gone:.3f} s" if gone is not None else f"> {args.observe:.0f} s"
            print(f"round {r + 1} {s}: old generation gone {shown}, closed {closed}, failed {failed}", flush=True)
    print(f"\n{args.connections} keep-alive connections, {args.busy} busy (a request every 100 ms); medians of {args.rounds} rounds")
    print(f"{'server':<24} {'old generation gone':>20} {'closed':>8} {'failed':>8}")
    for s, rows in results.items():
        gones = [g for g, _, _ in rows if g is not None]
        gone = f"{statistics.median(gones):.3f} s" if len(gones) == len(rows) else f"> {args.observe:.0f} s ({len(rows) - len(gones)} of {len(rows)})"
        print(f"{s:<24} {gone:>20} {statistics.median(c for _, c, _ in rows):>8} {statistics.median(f for _, _, f in rows):>8}")


if __name__ == "__main__":
    sys.exit(main())
