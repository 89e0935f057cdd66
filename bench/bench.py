#!/usr/bin/env python3
"""The checkout-gateway benchmark: drives the release binary in --demo mode (its built-in sandbox
providers are the upstream) and prints one Markdown table. Run it through bench/run.sh, which
builds the binary and installs wrk.

The gateway runs pinned to one core and the load generators to the other (taskset); every
figure is the median of several runs, each run against the same server where a figure is a
ratio of two measurements.
"""

import asyncio
import base64
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "bench")
BINARY = os.environ.get("GATEWAY_BIN", os.path.join(ROOT, "target", "release", "checkout-gateway"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
LATENCY_MS = int(os.environ.get("BENCH_UPSTREAM_LATENCY_MS", "20"))
GATEWAY_CPU = os.environ.get("BENCH_GATEWAY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
FILL = int(os.environ.get("BENCH_FILL_SESSIONS", "100000"))
# Sections to run: any of "abc", "de", "f", "g", "h", "i", "j", "k", "l" (comma-separated); all by default.
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "abc,de,f,g,h,i,j,k,l").split(",")))
SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", "1000"))
WEBHOOK_ROUNDS = int(os.environ.get("BENCH_WEBHOOK_ROUNDS", "20"))
# (l): WebSocket subscribers on one replica, webhook rounds per run.
WS_SUBSCRIBERS = int(os.environ.get("BENCH_WS_SUBSCRIBERS", "10000"))
WS_ROUNDS = int(os.environ.get("BENCH_WS_ROUNDS", "10"))
WSLOAD = os.path.join(BENCH_DIR, "wsload", "target", "release", "wsload")
WSFLOOR = os.path.join(BENCH_DIR, "wsload", "target", "release", "wsfloor")
SENDFLOOR = os.path.join(BENCH_DIR, "target", "sendfloor")
# Built by scripts/hive-router.sh (cargo install hive-router 0.2.5), found by bench/run.sh (which
# sets HIVE_ROUTER_BIN); the router rows are left out without it.
HIVE_ROUTER = os.environ.get("HIVE_ROUTER_BIN", "")


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Gateway:
    """The release binary in --demo mode on a free port, pinned to GATEWAY_CPU (or `cpu`)."""

    def __init__(self, latency_ms=0, extra_env=None, demo=True, cpu=GATEWAY_CPU):
        env = dict(os.environ)
        env.update({
            "GATEWAY_LISTEN": "127.0.0.1:0",
            # The sections without --demo: the benchmark measures the gateway, not access.
            "GATEWAY_AUTH": "none",
            "LOG_FORMAT": "json",
            "RUST_LOG": "warn,checkout_gateway=info,checkout_gateway::providers=warn,checkout_gateway::server=warn",
            "GATEWAY_DEMO_LATENCY": f"{latency_ms}ms",
            "GATEWAY_SHUTDOWN_DELAY": "0s",
            # A 100-ref cold batch is one round of upstream calls only if 100 may be in flight.
            "GATEWAY_UPSTREAM_CONCURRENCY": "128",
            "GATEWAY_CACHE_MAX_ENTRIES": str(max(200_000, 2 * FILL)),
            "GATEWAY_CACHE_MAX_BYTES": str(1 << 30),
            # The sandbox is local: the providers' quotas (which the gateway keeps by default)
            # would only measure the quota.
            "GATEWAY_UPSTREAM_RATE_LIMIT": "off",
        })
        env.update(extra_env or {})
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            ["taskset", "-c", cpu, BINARY] + (["--demo"] if demo else []), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addr = None
        self.sandbox = {}
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "account" in event and "base_url" in event:
                self.sandbox[event["account"]] = event["base_url"]
            if "addr" in event:
                self.addr = event["addr"]
                break
        if not self.addr:
            raise RuntimeError("the gateway did not report its address")
        # Keep draining stdout so the gateway never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.url = f"http://{self.addr}"

    def wait_ready(self):
        """Seconds from process start to the first 200 of /readyz."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.001)
        raise RuntimeError("/readyz never answered 200")

    def rss_bytes(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self):
        stop_process(self.process)


def stop_process(process):
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def wrk(script, url, connections, seconds, run_id="", token=""):
    env = dict(os.environ, BENCH_DIR=BENCH_DIR, BENCH_RUN=run_id, BENCH_TOKEN=token)
    output = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", os.path.join(BENCH_DIR, script), url],
        env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    if result["errors"] or result["non2xx"]:
        raise RuntimeError(f"{script}: {result['errors']} socket errors, {result['non2xx']} non-2xx answers")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


async def post(host, port, body, connection=None):
    """One HTTP/1.1 POST /graphql; returns (status, body, seconds)."""
    reader, writer = connection or await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    request = (f"POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    started = time.perf_counter()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    payload = await reader.readexactly(length)
    elapsed = time.perf_counter() - started
    if connection is None:
        writer.close()
    return status, json.loads(payload), elapsed


def host_port(gateway):
    host, port = gateway.addr.rsplit(":", 1)
    return host, int(port)


async def coalescing(gateway, askers):
    """(d): `askers` connections, opened first, then the same query for one cold session sent
    on all of them at once. Returns the upstream calls made and how the askers were answered."""
    host, port = host_port(gateway)
    session = f"cks_bench_coalesce_{time.time_ns()}"
    body = {"query": f'{{ checkoutSession(provider: DODO, id: "{session}") {{ __typename }} }}'}
    connections = [await asyncio.open_connection(host, port) for _ in range(askers)]
    before = sandbox_requests(gateway)
    metrics_before = gateway.metrics()
    results = await asyncio.gather(*(post(host, port, body, c) for c in connections))
    for _, writer in connections:
        writer.close()
    assert all(status == 200 and r["data"]["checkoutSession"]["__typename"] == "CheckoutSession"
               for status, r, _ in results), "every asker gets the session"
    after = sandbox_requests(gateway)
    metrics_after = gateway.metrics()
    delta = lambda name: metric(metrics_after, name) - metric(metrics_before, name)
    return after - before, {
        "misses": delta('checkout_gateway_cache_misses_total{provider="dodo"}'),
        "coalesced": delta('checkout_gateway_cache_coalesced_waits_total{provider="dodo"}'),
        "hits": delta('checkout_gateway_cache_hits_total{provider="dodo"}'),
        "replays": delta("checkout_gateway_response_cache_hits_total"),
    }


def sandbox_requests(gateway):
    with urllib.request.urlopen(gateway.sandbox["dodo"] + "/_sandbox/stats", timeout=5) as response:
        return json.loads(response.read())["requests"]


def batch_body(ids, fields="id status"):
    refs = ", ".join(f'{{provider: DODO, id: "{i}"}}' for i in ids)
    return {"query": f"{{ checkoutSessions(refs: [{refs}]) {{ __typename ... on CheckoutSession {{ {fields} }} }} }}"}


async def batch_times(gateway, runs):
    """(e): a 100-ref batch, all cold (fresh ids); then the same sessions asked with other
    fields (all from the session cache, the answer assembled); then the first batch again
    (replayed whole)."""
    host, port = host_port(gateway)
    cold, assembled, cached = [], [], []
    for run in range(runs):
        ids = [f"cks_bench_batch_{time.time_ns()}_{run}_{i}" for i in range(100)]
        status, body, elapsed = await post(host, port, batch_body(ids))
        assert status == 200 and len(body["data"]["checkoutSessions"]) == 100
        assert all(r["__typename"] == "CheckoutSession" for r in body["data"]["checkoutSessions"])
        cold.append(elapsed)
        status, body, elapsed = await post(host, port, batch_body(ids, "id status providerStatus"))
        assert status == 200 and all(r["__typename"] == "CheckoutSession" for r in body["data"]["checkoutSessions"])
        assembled.append(elapsed)
        status, body, elapsed = await post(host, port, batch_body(ids))
        cached.append(elapsed)
    return cold, assembled, cached


async def upstream_round_trip(gateway, runs):
    """One GET to the sandbox provider with its added latency: what a cold batch is set against."""
    url = gateway.sandbox["dodo"]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    times = []
    for run in range(runs):
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (f"GET /checkouts/cks_bench_rtt_{time.time_ns()}_{run} HTTP/1.1\r\nHost: {host}\r\n"
                   "Authorization: Bearer demo_dodo_key\r\n\r\n").encode()
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        await reader.readexactly(length)
        times.append(time.perf_counter() - started)
        writer.close()
    return times


async def fill(gateway, sessions):
    """(f): caches `sessions` distinct sessions, 100 per request, 8 requests at a time."""
    host, port = host_port(gateway)
    prefix = f"cks_bench_fill_{time.time_ns()}"
    batches = [[f"{prefix}_{b}_{i}" for i in range(100)] for b in range(sessions // 100)]
    connections = [await asyncio.open_connection(host, port) for _ in range(8)]

    async def worker(index):
        for batch in batches[index::8]:
            status, _, _ = await post(host, port, batch_body(batch), connections[index])
            assert status == 200

    await asyncio.gather(*(worker(i) for i in range(8)))
    for _, writer in connections:
        writer.close()


def free_port():
    """A port free on 127.0.0.1 now."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def median(values):
    return statistics.median(values)


def med(runs, key):
    """The median of one figure over wrk runs."""
    return median([run[key] for run in runs])


def throughput(runs):
    """Requests per second and latency, the medians over wrk runs."""
    return (f"{med(runs, 'rps'):,.0f} req/s; p50 {med(runs, 'p50_us') / 1000:.2f} ms, "
            f"p99 {med(runs, 'p99_us') / 1000:.2f} ms")


def per_run(values, digits=2):
    return ", ".join(f"{value:.{digits}f}" for value in values)


def ms(seconds):
    return f"{seconds * 1000:.2f} ms"


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    rows = []

    if "abc" in ONLY:
        rows += section_abc()
    if "de" in ONLY:
        rows += section_de()
    if "f" in ONLY:
        rows += section_f()
    if "g" in ONLY:
        rows += section_g()
    if "h" in ONLY:
        rows += section_h()
    if "i" in ONLY:
        rows += section_i()
    if "j" in ONLY:
        rows += section_j()
    if "k" in ONLY:
        rows += section_k()
    if "l" in ONLY:
        rows += section_l()
    print_table(commit, dirty, cpu, rows)


def section_abc():
    """(a), (b), (c): one server, upstream latency 0, runs interleaved so drift hits all alike."""
    rows = []
    log(f"(a)(b)(c): {RUNS} runs of {SECONDS}s, {CONNECTIONS} connections")
    gateway = Gateway(latency_ms=0)
    gateway.wait_ready()
    wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, 1)  # warm-up: fills the cache
    cached, livez, cold, direct = [], [], [], []
    for run in range(RUNS):
        cached.append(wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, SECONDS))
        livez.append(wrk("livez.lua", gateway.url + "/livez", CONNECTIONS, SECONDS))
        # One connection: the latency a miss adds, not the queueing of a saturated core.
        cold.append(wrk("cold.lua", gateway.url, 1, SECONDS, f"c{run}_{time.time_ns()}"))
        direct.append(wrk("direct.lua", gateway.sandbox["dodo"], 1, SECONDS, f"d{run}_{time.time_ns()}"))
    gateway.stop()
    ratios = [c["rps"] / l["rps"] for c, l in zip(cached, livez)]
    rows.append(("(a) cached `checkoutSession`", f"{throughput(cached)} ({CONNECTIONS} connections)", ""))
    rows.append(("(b) `/livez`, same server", throughput(livez), ""))
    ratio = median(ratios)
    rows.append(("(a)/(b)", f"{ratio:.2f} (per run: {per_run(ratios)})",
                 verdict("≥ 0.5", ratio >= 0.5, f"{0.5 - ratio:.2f}")))
    # (a′) the same, with whole-response replay off: every request parsed-document-cached,
    # validated, executed against the session cache and serialised.
    gateway = Gateway(latency_ms=0, extra_env={"GATEWAY_RESPONSE_CACHE_BYTES": "0"})
    gateway.wait_ready()
    wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, 1)
    assembled, livez2 = [], []
    for run in range(RUNS):
        assembled.append(wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, SECONDS))
        livez2.append(wrk("livez.lua", gateway.url + "/livez", CONNECTIONS, SECONDS))
    gateway.stop()
    ratios2 = [c["rps"] / l["rps"] for c, l in zip(assembled, livez2)]
    rows.append(("(a′) the same with response replay off (`GATEWAY_RESPONSE_CACHE_BYTES=0`)",
                 f"{throughput(assembled)}; /livez on that server {med(livez2, 'rps'):,.0f} req/s; "
                 f"ratio {median(ratios2):.2f} (per run: {per_run(ratios2)})",
                 verdict("≥ 0.4", median(ratios2) >= 0.4, f"{0.4 - median(ratios2):.2f}")))
    # (a″) production logging: `RUST_LOG=info`, JSON, every request logged, replay on and off.
    prod = {"RUST_LOG": "info", "LOG_FORMAT": "json"}
    gateway = Gateway(latency_ms=0, extra_env=prod)
    gateway.wait_ready()
    wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, 1)
    prod_gateway_off = Gateway(latency_ms=0, extra_env={**prod, "GATEWAY_RESPONSE_CACHE_BYTES": "0"})
    prod_gateway_off.wait_ready()
    wrk("cached.lua", prod_gateway_off.url + "/graphql", CONNECTIONS, 1)
    prod_cached, prod_livez, prod_off = [], [], []
    for run in range(RUNS):
        prod_cached.append(wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, SECONDS))
        prod_livez.append(wrk("livez.lua", gateway.url + "/livez", CONNECTIONS, SECONDS))
        prod_off.append(wrk("cached.lua", prod_gateway_off.url + "/graphql", CONNECTIONS, SECONDS))
    gateway.stop()
    prod_gateway_off.stop()
    prod_ratio = median([c["rps"] / l["rps"] for c, l in zip(prod_cached, prod_livez)])
    prod_off_ratios = [c["rps"] / l["rps"] for c, l in zip(prod_off, prod_livez)]
    prod_off_ratio = median(prod_off_ratios)
    rows.append(("(a″) cached `checkoutSession` at the production log setting (`RUST_LOG=info`, JSON)",
                 f"{throughput(prod_cached)}; "
                 f"/livez {med(prod_livez, 'rps'):,.0f} req/s; ratio {prod_ratio:.2f}",
                 verdict("≥ 0.7", prod_ratio >= 0.7, f"{0.7 - prod_ratio:.2f}")))
    rows.append(("(a″′) the same with response replay off (executed every time)",
                 f"{throughput(prod_off)}; "
                 f"ratio to that /livez {prod_off_ratio:.2f} (per run: {per_run(prod_off_ratios)})",
                 verdict("≥ 0.4", prod_off_ratio >= 0.4, f"{0.4 - prod_off_ratio:.2f}")))
    overhead50 = med(cold, "p50_us") - med(direct, "p50_us")
    overhead99 = med(cold, "p99_us") - med(direct, "p99_us")
    rows.append(("(c) cold miss overhead (gateway − direct)",
                 f"p50 {overhead50 / 1000:.3f} ms, p99 {overhead99 / 1000:.3f} ms (gateway p50 {med(cold, 'p50_us') / 1000:.2f} ms, "
                 f"direct p50 {med(direct, 'p50_us') / 1000:.2f} ms; 1 connection)",
                 verdict("p50 ≤ 0.5 ms", overhead50 <= 500, f"{(overhead50 - 500) / 1000:.2f} ms")))
    return rows


def section_de():
    """(d), (e): one server whose sandbox adds LATENCY_MS to every answer."""
    rows = []
    log(f"(d)(e): upstream latency {LATENCY_MS} ms")
    gateway = Gateway(latency_ms=LATENCY_MS)
    gateway.wait_ready()
    calls, how = [], []
    for _ in range(RUNS):
        made, split = asyncio.run(coalescing(gateway, 1000))
        calls.append(made)
        how.append(split)
    rows.append(("(d) upstream calls for 1,000 concurrent identical cold queries",
                 f"{median(calls):.0f} (per run: {', '.join(str(c) for c in calls)}; last run's askers: "
                 f"{how[-1]['misses']:.0f} called, {how[-1]['coalesced']:.0f} waited on that call, {how[-1]['hits']:.0f} session-cache hits, "
                 f"{how[-1]['replays']:.0f} replayed responses)",
                 verdict("exactly 1", all(c == 1 for c in calls))))
    before = sandbox_requests(gateway)
    cold_batch, assembled_batch, cached_batch = asyncio.run(batch_times(gateway, max(RUNS, 5)))
    batch_calls = sandbox_requests(gateway) - before
    rtt = median(asyncio.run(upstream_round_trip(gateway, 20)))
    gateway.stop()
    batch_ratio = median(cold_batch) / rtt
    rows.append(("(e) `checkoutSessions`, 100 refs, sessions cached, answer assembled", ms(median(assembled_batch)), ""))
    rows.append(("(e) `checkoutSessions`, 100 refs, the same request again (replayed)", ms(median(cached_batch)),
                 f"upstream calls for all {max(RUNS, 5)} rounds: {batch_calls} (100 per cold batch)"))
    rows.append(("(e) `checkoutSessions`, 100 refs, all cold",
                 f"{ms(median(cold_batch))} = {batch_ratio:.2f} × one upstream round trip ({ms(rtt)})",
                 verdict("≤ 1.5 ×", batch_ratio <= 1.5, f"{batch_ratio - 1.5:.2f} ×")))
    return rows


def section_f():
    """(f): memory with FILL cached sessions."""
    rows = []
    log(f"(f): filling {FILL} sessions")
    per_session = []
    full_rss = []
    for _ in range(3):
        gateway = Gateway(latency_ms=0)
        gateway.wait_ready()
        asyncio.run(fill(gateway, 1000))  # warms allocator and connection pools
        before = gateway.rss_bytes()
        asyncio.run(fill(gateway, FILL))
        entries = metric(gateway.metrics(), "checkout_gateway_cache_entries")
        after = gateway.rss_bytes()
        gateway.stop()
        if entries < FILL:
            raise RuntimeError(f"only {entries:.0f} of {FILL + 1000} sessions stayed cached")
        per_session.append((after - before) / FILL)
        full_rss.append(after)
    bps = median(per_session)
    rows.append((f"(f) resident size with {FILL:,} cached sessions",
                 f"{median(full_rss) / 2**20:.1f} MiB; {bps:,.0f} bytes per session "
                 f"(per run: {', '.join(f'{b:,.0f}' for b in per_session)})",
                 verdict("≤ 1 KiB", bps <= 1024, f"{bps - 1024:,.0f} B")))
    return rows


def section_g():
    """(g): start-up and idle size, fresh processes."""
    rows = []
    starts, idle = [], []
    for _ in range(RUNS):
        gateway = Gateway(latency_ms=0)
        starts.append(gateway.wait_ready())
        time.sleep(0.5)
        idle.append(gateway.rss_bytes())
        gateway.stop()
    rows.append(("(g) idle resident size", f"{median(idle) / 2**20:.1f} MiB",
                 verdict("< 20 MiB", median(idle) < 20 * 2**20)))
    rows.append(("(g) process start to `/readyz` 200", f"{ms(median(starts))} (per run: {', '.join(ms(s) for s in starts)})",
                 verdict("≤ 100 ms", median(starts) <= 0.1)))
    return rows


class JsonServer:
    """An HTTP server on 127.0.0.1 answering every GET with `answer(path)` as JSON."""

    def __init__(self, answer):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps(answer(self.path)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def shutdown(self):
        self.server.shutdown()


class FakeDodo(JsonServer):
    """Dodo's `GET /checkouts/{id}` on 127.0.0.1, answering with `self.status` (changed between
    webhooks, so that each refetch finds a change to send)."""

    def __init__(self):
        self.status = "processing"
        self.requests = 0
        super().__init__(self.session)

    def session(self, path):
        self.requests += 1
        return {"id": path.rsplit("/", 1)[-1], "created_at": "2025-06-01T12:00:00Z",
                "payment_id": "pay_bench", "payment_status": self.status}


WEBHOOK_SECRET_BYTES = b"bench-webhook-secret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_SECRET_BYTES).decode()


def dodo_env(url):
    """The gateway's Dodo account on the stand-in at `url`, kept current by signed webhooks."""
    return {"DODO_PAYMENTS_API_KEY": "bench_key", "DODO_PAYMENTS_BASE_URL": url,
            "DODO_PAYMENTS_WEBHOOK_KEY": WEBHOOK_SECRET}


def signed_webhook(session, status):
    """A Dodo `payment.*` delivery, signed as Standard Webhooks says."""
    import hashlib
    import hmac
    import uuid
    delivery, timestamp = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    body = json.dumps({"business_id": "bus_bench", "type": f"payment.{status}", "timestamp": "2025-06-01T12:00:00Z",
                       "data": {"payment_id": "pay_bench", "checkout_session_id": session, "status": status}})
    signature = base64.b64encode(hmac.new(WEBHOOK_SECRET_BYTES, f"{delivery}.{timestamp}.{body}".encode(),
                                          hashlib.sha256).digest()).decode()
    headers = {"content-type": "application/json", "webhook-id": delivery, "webhook-timestamp": timestamp,
               "webhook-signature": f"v1,{signature}"}
    return headers, body.encode()


async def sse_subscriber(host, port, session, arrivals, ready):
    """One subscription over Server-Sent Events; appends (time, status) for each update."""
    import urllib.parse
    query = ("subscription($id: ID!) { checkoutSessionUpdated(provider: DODO, id: $id) "
             "{ ... on CheckoutSession { status } } }")
    params = urllib.parse.urlencode({"query": query, "variables": json.dumps({"id": session})})
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"GET /graphql?{params} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                  "apollo-require-preflight: true\r\n\r\n").encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    first = True
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"data: {"):
            status = json.loads(line[6:])["data"]["checkoutSessionUpdated"]["status"]
            if first:
                first = False
                ready.release()
            else:
                arrivals.append((time.perf_counter(), status))


async def webhook_latencies(gateway, session):
    host, port = host_port(gateway)
    arrivals, ready = [], asyncio.Semaphore(0)
    tasks = [asyncio.create_task(sse_subscriber(host, port, session, arrivals, ready)) for _ in range(SUBSCRIBERS)]
    for _ in range(SUBSCRIBERS):
        await asyncio.wait_for(ready.acquire(), 30)
    latencies = []
    statuses = ["requires_customer_action", "processing"]
    for round_ in range(WEBHOOK_ROUNDS):
        status = statuses[round_ % 2]
        gateway.fake.status = status
        arrivals.clear()
        headers, body = signed_webhook(session, "processing")
        sent = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((f"POST /webhooks/dodo HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n"
                      "Connection: close\r\n\r\n").encode() + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"webhook refused: {answer[:200]!r}")
        deadline = time.perf_counter() + 10
        while len(arrivals) < SUBSCRIBERS and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        if len(arrivals) < SUBSCRIBERS:
            raise RuntimeError(f"round {round_}: {len(arrivals)} of {SUBSCRIBERS} subscribers were told")
        latencies += [at - sent for at, _ in arrivals]
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    return latencies


def section_h():
    """(h): a webhook's change reaching 1,000 subscribers (SSE), production log settings."""
    log(f"(h): {WEBHOOK_ROUNDS} webhooks to {SUBSCRIBERS} subscribers of one session")
    fake = FakeDodo()
    gateway = Gateway(demo=False, extra_env=dodo_env(fake.url))
    gateway.fake = fake
    gateway.wait_ready()
    latencies = sorted(asyncio.run(webhook_latencies(gateway, "cks_bench_live")))
    gateway.stop()
    fake.shutdown()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return [(f"(h) webhook to subscriber, {SUBSCRIBERS:,} SSE subscribers of one session",
             f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(latencies[-1])} ({WEBHOOK_ROUNDS} webhooks, "
             f"{len(latencies):,} deliveries; includes the subscribers' own reading in one Python process)",
             verdict("p99 < 1 s", p99 < 1))]


class RedisServer:
    """A `redis-server` on a free port, without persistence."""

    def __init__(self):
        import socket
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


QUERY = "query($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { status } } }"


async def hit_latencies(writer_gateway, reader_gateway, sessions):
    """Per session: A fetches it; then B's first read (through Redis) and second (local)."""
    a, b = host_port(writer_gateway), host_port(reader_gateway)
    conn_a = await asyncio.open_connection(*a)
    conn_b = await asyncio.open_connection(*b)
    through_redis, local = [], []
    for n in range(sessions):
        body = {"query": QUERY, "variables": {"id": f"cks_bench_shared_{n}"}}
        await post(*a, body, conn_a)
        through_redis.append((await post(*b, body, conn_b))[2])
        local.append((await post(*b, body, conn_b))[2])
    for _, writer in (conn_a, conn_b):
        writer.close()
    return through_redis, local


async def hot_spread(gateways, sessions, askers):
    """`askers` concurrent queries for each of `sessions` cold sessions, spread over the replicas."""
    async def ask(gateway, n):
        status, _, _ = await post(*host_port(gateway), {"query": QUERY, "variables": {"id": f"cks_bench_hot_{n}"}})
        assert status == 200
    for n in range(sessions):
        await asyncio.gather(*(ask(gateways[k % len(gateways)], n) for k in range(askers)))


def section_i():
    """(i): three replicas (all on the gateway CPU) sharing one redis-server, against a local stand-in for Dodo."""
    import base64
    rows = []
    log("(i): 3 replicas, one redis-server")
    sessions, askers = 200, 30
    per_session = {}
    for shared in (False, True):
        fake = FakeDodo()
        fake.status = "succeeded"
        redis = RedisServer() if shared else None
        env = {"DODO_PAYMENTS_API_KEY": "bench_key", "DODO_PAYMENTS_BASE_URL": fake.url,
               "GATEWAY_RESPONSE_CACHE_BYTES": "0"}
        if redis:
            env["GATEWAY_REDIS_URL"] = redis.url
        gateways = [Gateway(demo=False, extra_env=env) for _ in range(3)]
        for gateway in gateways:
            gateway.wait_ready()
        before = fake.requests
        asyncio.run(hot_spread(gateways, sessions, askers))
        per_session[shared] = fake.requests - before
        if shared:
            through_redis, local = asyncio.run(hit_latencies(gateways[0], gateways[1], 500))
        for gateway in gateways:
            gateway.stop()
        if redis:
            redis.stop()
        fake.shutdown()
    rows.append(("(i) 3 replicas: upstream calls per hot session",
                 f"{per_session[True] / sessions:.3f} with Redis ({per_session[True]} calls), "
                 f"{per_session[False] / sessions:.3f} without ({per_session[False]} calls) "
                 f"for {sessions} cold sessions, {askers} concurrent askers each, spread over the replicas",
                 f"1 with Redis: {'met' if per_session[True] <= sessions else f'{per_session[True] - sessions} extra'}"))
    rows.append(("(i) 3 replicas: a hit through Redis vs a local hit (replay off, one connection)",
                 f"through Redis p50 {ms(median(through_redis))}, p99 {ms(sorted(through_redis)[int(len(through_redis) * 0.99)])}; "
                 f"local p50 {ms(median(local))}, p99 {ms(sorted(local)[int(len(local) * 0.99)])} "
                 f"(500 sessions; the client's own time included)", ""))
    return rows


def es256_issuer(directory):
    """A JWT issuer for (j): an ES256 key made by openssl, its JWKS, and one token signed with
    it (openssl signs; the DER signature becomes JWS's r||s)."""
    import base64
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    point = subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-outform", "DER"], check=True,
                           capture_output=True).stdout[-65:]
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:]), "kid": "bench",
                      "alg": "ES256", "use": "sig"}]}
    header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
    claims = b64(json.dumps({"sub": "bench", "iss": "https://auth.bench.test/", "aud": "checkout-gateway",
                             "exp": int(time.time()) + 3600, "checkout_accounts": ["*"]}).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=f"{header}.{claims}".encode(),
                         check=True, capture_output=True).stdout
    at = 3 if der[1] & 0x80 else 2
    numbers = []
    for _ in range(2):
        length = der[at + 1]
        numbers.append(int.from_bytes(der[at + 2:at + 2 + length], "big").to_bytes(32, "big"))
        at += 2 + length
    return jwks, f"{header}.{claims}.{b64(numbers[0] + numbers[1])}"


def section_j():
    """(j): (a) again from a client with a JWT, against /livez on the same server: what
    `GATEWAY_AUTH=jwt` (the production overlay's mode) costs a cached answer."""
    import tempfile
    log(f"(j): {RUNS} runs of {SECONDS}s with an ES256 JWT")
    with tempfile.TemporaryDirectory() as directory:
        jwks, token = es256_issuer(directory)
    server = JsonServer(lambda path: jwks)
    gateway = Gateway(latency_ms=0, extra_env={
        "GATEWAY_AUTH": "jwt", "GATEWAY_JWT_JWKS_URL": f"{server.url}/jwks.json",
        "GATEWAY_JWT_ISSUER": "https://auth.bench.test/", "GATEWAY_JWT_AUDIENCE": "checkout-gateway",
        "GATEWAY_JWT_ALGORITHMS": "ES256"})
    gateway.wait_ready()
    wrk("cached_jwt.lua", gateway.url + "/graphql", CONNECTIONS, 1, token=token)
    with_token, livez = [], []
    for _ in range(RUNS):
        with_token.append(wrk("cached_jwt.lua", gateway.url + "/graphql", CONNECTIONS, SECONDS, token=token))
        livez.append(wrk("livez.lua", gateway.url + "/livez", CONNECTIONS, SECONDS))
    gateway.stop()
    server.shutdown()
    ratio = median([t["rps"] / l["rps"] for t, l in zip(with_token, livez)])
    return [("(j) cached `checkoutSession` with a JWT (ES256, `GATEWAY_AUTH=jwt`)",
             f"{throughput(with_token)}; /livez {med(livez, 'rps'):,.0f} req/s; "
             f"ratio {ratio:.2f} (compare (a)/(b))", "")]


def section_k():
    """(k): Hive Gateway over GraphQL Mesh (bench/mesh: Mesh's JSON Schema source for Dodo's
    `GET /checkouts/{id}`) against the gateway, the same session, each on the gateway's core,
    runs interleaved. Hive, at its defaults, has no cache, so each of its answers is a call to
    the Dodo sandbox of a separate --demo process on the load core (cheap next to Hive)."""
    import tempfile
    mesh_dir = os.path.join(BENCH_DIR, "mesh")
    bin_dir = os.path.join(mesh_dir, "node_modules", ".bin")
    if not os.path.exists(os.path.join(bin_dir, "hive-gateway")):
        raise RuntimeError("bench/mesh has no node_modules: bench/run.sh installs them (npm ci)")
    log(f"(k): Hive Gateway + Mesh against the gateway, {RUNS} runs of {SECONDS}s each")
    upstream = Gateway(latency_ms=0, cpu=LOAD_CPU)
    upstream.wait_ready()
    with tempfile.TemporaryDirectory() as directory:
        supergraph = os.path.join(directory, "supergraph.graphql")
        subprocess.run([os.path.join(bin_dir, "mesh-compose")], cwd=mesh_dir, check=True, capture_output=True,
                       env=dict(os.environ, DODO_URL=upstream.sandbox["dodo"], SUPERGRAPH=supergraph))
        port = free_port()
        # Started outside bench/mesh: Hive would otherwise load mesh.config.mjs as its own config.
        hive = subprocess.Popen(
            ["taskset", "-c", GATEWAY_CPU, os.path.join(bin_dir, "hive-gateway"), "supergraph", supergraph,
             "--port", str(port), "--host", "127.0.0.1"],
            cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hive_url = f"http://127.0.0.1:{port}/graphql"
        body = json.dumps({"query": '{ checkout(id: "cks_demo_succeeded") { id payment_status customer_email created_at } }'})

        def check_hive(when):
            """Hive's answer is the session (wrk sees only statuses: GraphQL errors come with 200)."""
            request = urllib.request.Request(hive_url, data=body.encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                answer = json.loads(response.read())
            if ((answer.get("data") or {}).get("checkout") or {}).get("payment_status") != "succeeded":
                raise RuntimeError(f"Hive Gateway + Mesh {when}: {answer}")

        deadline = time.monotonic() + 60
        while True:
            try:
                check_hive("gave a wrong answer")
                break
            except OSError:
                if time.monotonic() > deadline or hive.poll() is not None:
                    raise RuntimeError("Hive Gateway did not start")
                time.sleep(0.2)
        replay = Gateway(latency_ms=0)
        executed = Gateway(latency_ms=0, extra_env={"GATEWAY_RESPONSE_CACHE_BYTES": "0"})
        for gateway in (replay, executed):
            gateway.wait_ready()
            wrk("cached.lua", gateway.url + "/graphql", CONNECTIONS, 1)
        wrk("mesh.lua", hive_url, CONNECTIONS, SECONDS)  # warm-up: Node's JIT
        hive_runs, replay_runs, executed_runs = [], [], []
        for _ in range(RUNS):
            hive_runs.append(wrk("mesh.lua", hive_url, CONNECTIONS, SECONDS))
            replay_runs.append(wrk("cached.lua", replay.url + "/graphql", CONNECTIONS, SECONDS))
            executed_runs.append(wrk("cached.lua", executed.url + "/graphql", CONNECTIONS, SECONDS))
        check_hive("failed under load")
        hive.terminate()
        hive.wait(timeout=30)
    for gateway in (replay, executed, upstream):
        gateway.stop()
    times = lambda runs: [r["rps"] / h["rps"] for r, h in zip(runs, hive_runs)]
    return [("(k) Hive Gateway 2.15.1 + Mesh (JSON Schema source, no cache) on the same Dodo session, same core",
             throughput(hive_runs), ""),
            ("(k) the gateway in the same runs: replay on (a), replay off (a′)",
             f"{med(replay_runs, 'rps'):,.0f} req/s = {median(times(replay_runs)):.0f} × Hive + Mesh; "
             f"{med(executed_runs, 'rps'):,.0f} req/s = {median(times(executed_runs)):.0f} × "
             f"(per run: {per_run(times(executed_runs), 0)})", "")]


def live_env(stand_in_url, subscribers, per_connection=None):
    """The gateway of (l): its Dodo account on the stand-in, kept current by webhooks, with the
    per-replica bounds raised so that `subscribers` WebSockets fit, by configuration alone:
    GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS (2,048 by default) counts admitted WebSockets, and
    GATEWAY_MAX_CONNECTIONS (4,096) every open connection, WebSockets included, so it keeps room
    for the webhooks, probes and /metrics besides. The process's descriptor limit must fit them
    too (bench/run.sh raises it)."""
    env = {
        **dodo_env(stand_in_url),
        "GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS": str(subscribers),
        "GATEWAY_MAX_CONNECTIONS": str(subscribers + 1024),
        # Without authentication every subscriber is one client: the first answers of 1,000
        # sessions are 1,000 lookups on one client budget (600/min by default).
        "GATEWAY_CLIENT_RATE_LIMIT": "off",
        # Production logging, as (a″).
        "RUST_LOG": "info",
        "LOG_FORMAT": "json",
    }
    if per_connection:
        env["GATEWAY_SUBSCRIPTIONS_PER_CONNECTION"] = str(per_connection)
    return env


def live_run(subscribers, sessions, router=None, server=None):
    """One run of bench/wsload (on the load core) against a fresh gateway (on the gateway core):
    `subscribers` graphql-transport-ws subscribers spread over `sessions` sessions, WS_ROUNDS
    webhook rounds, an idle window. wsload serves the Dodo stand-in, so it starts first and is
    told the gateway's address (and the router's, if `router`) on its stdin. `router(gateway)`
    starts a router in front of the gateway and returns it (with `ws_url`, `pid`, `stop()`);
    subscribers then connect to the router, webhooks still go to the gateway. `server()`, if
    given, starts another server in the gateway's place (see FloorServer)."""
    load = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, WSLOAD, "--subscribers", str(subscribers), "--sessions", str(sessions),
         "--rounds", str(WS_ROUNDS), "--webhook-secret", WEBHOOK_SECRET],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    gateway = front = None
    try:
        dodo_url = json.loads(load.stdout.readline())["dodo_url"]
        if server:
            gateway = server()
            ws_url, webhook_url = gateway.ws_url, gateway.webhook_url
        else:
            # Behind a router every client's subscription shares the router's one WebSocket here.
            gateway = Gateway(demo=False, extra_env=live_env(dodo_url, subscribers, subscribers if router else None))
            gateway.wait_ready()
            ws_url, webhook_url = gateway.url.replace("http://", "ws://") + "/graphql", gateway.url + "/webhooks/dodo"
        pids = {"gateway": gateway.process.pid}
        if router:
            front = router(gateway)
            ws_url, pids["router"] = front.ws_url, front.pid
        load.stdin.write(json.dumps({"ws_url": ws_url, "webhook_url": webhook_url, "pids": pids}) + "\n")
        load.stdin.flush()
        output, _ = load.communicate(timeout=1800)
    finally:
        if load.poll() is None:
            load.kill()
        if front:
            front.stop()
        if gateway:
            gateway.stop()
    lines = output.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": f"wsload exited {load.returncode} without a report"}
    if "error" in result:
        raise RuntimeError(f"(l) wsload: {result['error']}")
    return result


class FloorServer:
    """bench/wsload's `wsfloor` on the gateway's core: a bare graphql-transport-ws server on the
    gateway's stack (tokio, tokio-tungstenite, a task per socket), nothing else; it prints its
    WebSocket and webhook URLs."""

    def __init__(self):
        self.process = subprocess.Popen(["taskset", "-c", GATEWAY_CPU, WSFLOOR], stdout=subprocess.PIPE, text=True)
        urls = json.loads(self.process.stdout.readline() or '{"error": "wsfloor printed nothing"}')
        if "error" in urls:
            stop_process(self.process)
            raise RuntimeError(f"(l) {urls['error']}")
        self.ws_url, self.webhook_url = urls["ws_url"], urls["webhook_url"]

    def stop(self):
        stop_process(self.process)


def compose_checkout_supergraph(subgraph_url):
    """The supergraph of `checkout` alone, composed with @apollo/composition as tests/federation
    does (its node_modules: bench/run.sh installs them)."""
    federation = os.path.join(ROOT, "tests", "federation")
    sdl = subprocess.run([BINARY, "schema"], check=True, capture_output=True, text=True).stdout
    script = ("import {composeServices} from '@apollo/composition'; import {parse} from 'graphql';"
              "let sdl = ''; for await (const chunk of process.stdin) sdl += chunk;"
              "const r = composeServices([{name: 'checkout', typeDefs: parse(sdl), url: process.env.SUBGRAPH_URL}]);"
              "if (r.errors) { console.error(JSON.stringify(r.errors)); process.exit(1); }"
              "process.stdout.write(r.supergraphSdl);")
    return subprocess.run(["node", "--input-type=module", "-e", script], cwd=federation, input=sdl, check=True,
                          capture_output=True, text=True, env=dict(os.environ, SUBGRAPH_URL=subgraph_url)).stdout


class HiveRouter:
    """Hive Router 0.2.5 in front of `gateway`, on the gateway's core with one worker: clients
    subscribe on its /ws; it subscribes to the gateway over WebSocket (graphql-transport-ws), and
    by default pools them: every client's subscription shares one socket to the gateway
    (`reuse_connections`). Its own bound on long-lived clients (128 by default) is lifted. The
    config keys are those tests/routers uses (README, "For mesh operators")."""

    def __init__(self, gateway, subscribers):
        import tempfile
        self.directory = tempfile.mkdtemp(prefix="bench-hive-router-")
        with open(os.path.join(self.directory, "supergraph.graphql"), "w") as file:
            file.write(compose_checkout_supergraph(gateway.url + "/graphql"))
        port = free_port()
        config = {
            "log": {"level": "warn", "format": "json"},
            "supergraph": {"source": "file", "path": "./supergraph.graphql"},
            "http": {"host": "127.0.0.1", "port": port, "workers": 1},
            "websocket": {"enabled": True, "path": "/ws"},
            "subscriptions": {"enabled": True, "websocket": {"subgraphs": {"checkout": {}}}},
            "traffic_shaping": {"router": {"max_long_lived_clients": subscribers + 1024}},
        }
        # JSON is YAML: the router reads this file as its YAML config.
        path = os.path.join(self.directory, "router.config.yaml")
        with open(path, "w") as file:
            json.dump(config, file)
        env = {k: v for k, v in os.environ.items() if k not in (
            "PORT", "HOST", "LOG_LEVEL", "LOG_FORMAT", "LOG_FILTER", "SUPERGRAPH_FILE_PATH",
            "WEBSOCKET_ENABLED", "SUBSCRIPTIONS_ENABLED")}
        env["ROUTER_CONFIG_FILE_PATH"] = path
        self.process = subprocess.Popen(["taskset", "-c", GATEWAY_CPU, HIVE_ROUTER], cwd=self.directory, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("Hive Router did not become ready")
            time.sleep(0.1)

    def stop(self):
        import shutil
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def verdict(target, met, shortfall=None):
    """A row's target column: the target, then `met`, or `missed` (by `shortfall`, when given)."""
    if met:
        return f"{target}: met"
    return f"{target}: missed by {shortfall}" if shortfall else f"{target}: missed"


def kib(value):
    return f"{value / 1024:.1f} KiB"


def live_rows(label, spread, one):
    """The rows of one (l) configuration: `spread` is the run over 1,000 sessions, `one` the run
    on one session (wsload's reports)."""
    rows = []
    for name, run in ((f"{WS_SUBSCRIBERS:,} over {spread['sessions']:,} sessions", spread),
                      (f"{WS_SUBSCRIBERS:,} on one session", one)):
        memory = []
        for process, figures in sorted(run["memory"].items()):
            memory.append(f"{process} {kib(figures['bytes_per_subscriber'])} per subscriber "
                          f"(RSS {figures['rss_before'] / 2**20:.0f} → {figures['rss_after'] / 2**20:.0f} MiB; "
                          f"from the first tenth to all: {kib(figures['marginal_bytes_per_subscriber'])}; "
                          f"after the webhooks: {kib(figures['bytes_per_subscriber_after_rounds'])})")
        per = sum(figures["bytes_per_subscriber"] for figures in run["memory"].values())
        rows.append((f"(l){label} resident memory per WebSocket subscriber, {name}", "; ".join(memory),
                     verdict("≤ 8 KiB", per <= 8192, kib(per - 8192))))
        latency, cpu = run["latency_ms"], run["cpu_seconds_during_rounds"]
        told = (f"{run['deliveries']:,} of {run['expected_deliveries']:,} deliveries"
                + (f", {run['missing']:,} missing" if run["missing"] else "")
                + (f", {run['extra']:,} extra" if run["extra"] else "")
                + (f", {run['wrong']:,} not a change" if run["wrong"] else "")
                + (f", {run['ended']:,} streams ended" if run["ended"] else ""))
        busy = ", ".join(f"{process} {seconds:.2f} s" for process, seconds in sorted(cpu.items()))
        value = (f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms "
                 f"({run['rounds']} rounds of {run['webhooks_per_round']:,} webhook{'s' if run['webhooks_per_round'] > 1 else ''}, "
                 f"{told}; CPU over the rounds: {busy} in {run['delivery_seconds']:.1f} s of delivery)")
        if run is one:
            target = verdict("p99 ≤ 100 ms", latency['p99'] <= 100 and not run['missing'])
        else:
            target = "" if not run["missing"] else "missed: not every subscriber was told"
        rows.append((f"(l){label} webhook to subscriber, {name}", value, target))
    idle = [run["idle"]["upstream_requests"] for run in (spread, one)]
    rows.append((f"(l){label} upstream calls from idle subscribers (webhooks configured)",
                 f"{idle[0]} and {idle[1]} in {spread['idle']['seconds']} s with no webhook "
                 f"({WS_SUBSCRIBERS:,} subscribers over {spread['sessions']:,} sessions, then on one)",
                 verdict("0", idle == [0, 0])))
    return rows


def section_l():
    """(l): live sessions at WS_SUBSCRIBERS WebSocket subscribers on one replica (bench/wsload,
    a Rust client on the load core, is the subscribers, the Dodo stand-in and the webhooks):
    spread over 1,000 sessions, then all on one; then the same through Hive Router if built."""
    if not (os.path.exists(WSLOAD) and os.path.exists(WSFLOOR)):
        raise RuntimeError("bench/wsload is not built: bench/run.sh builds it (cargo build --release)")
    sessions = max(1, min(1000, WS_SUBSCRIBERS // 10))
    log(f"(l): {WS_SUBSCRIBERS} WebSocket subscribers over {sessions} sessions, then on one; {WS_ROUNDS} rounds")
    one = live_run(WS_SUBSCRIBERS, 1)
    rows = live_rows("", live_run(WS_SUBSCRIBERS, sessions), one)
    rows.append(stack_floor(one))
    rows.append(send_floor())
    if HIVE_ROUTER and os.path.exists(HIVE_ROUTER):
        rows += section_l_router(lambda gateway: HiveRouter(gateway, WS_SUBSCRIBERS), sessions)
    else:
        log(f"(l): no Hive Router at {HIVE_ROUTER or '(HIVE_ROUTER_BIN unset)'} (scripts/hive-router.sh builds it): its rows are left out")
    return rows


def per_delivery_us(run):
    """A wsload run's CPU of the server (the gateway, or wsfloor in its place) over the rounds,
    per delivered update, in µs."""
    return run["cpu_seconds_during_rounds"]["gateway"] / max(1, run["deliveries"]) * 1e6


def stack_floor(gateway):
    """(l)'s floor on the gateway's stack: bench/wsload's `wsfloor` (a graphql-transport-ws server
    that skips all a subscription server may: no GraphQL, no authentication, one payload per
    change) in the gateway's place, on one session, against `gateway`'s run of the same."""
    log(f"(l): {WS_SUBSCRIBERS} WebSocket subscribers of one session on bench/wsload's wsfloor")
    run = live_run(WS_SUBSCRIBERS, 1, server=FloorServer)
    latency, ours, its = run["latency_ms"], per_delivery_us(gateway), per_delivery_us(run)
    missing = f", {run['missing']:,} missing" if run["missing"] else ""
    return (f"(l) floor on the gateway's stack: a bare graphql-transport-ws server (tokio, tokio-tungstenite "
            f"0.29, a task per socket; bench/wsload/src/bin/wsfloor.rs), {WS_SUBSCRIBERS:,} on one session",
            f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms "
            f"({run['deliveries']:,} of {run['expected_deliveries']:,} deliveries{missing}); "
            f"{its:.1f} µs of its CPU per delivered update, the gateway's {ours:.1f} µs = {ours / its:.2f} × "
            f"(per-round p99: {per_run(run['per_round_p99_ms'], 0)} ms)",
            verdict("p99 ≤ 100 ms, for reference", latency["p99"] <= 100 and not run["missing"]))


def send_floor():
    """(l)'s floor: bench/sendfloor (C, no framing, no runtime) sending 120 bytes to each of
    WS_SUBSCRIBERS loopback sockets from the gateway's core, read on the load core: what a round
    of one-session deliveries cannot go below on this machine, whatever the server."""
    if not os.path.exists(SENDFLOOR):
        raise RuntimeError("bench/target/sendfloor is not built: bench/run.sh builds it (gcc)")
    floor = json.loads(subprocess.run([SENDFLOOR, str(WS_SUBSCRIBERS), str(WS_ROUNDS), GATEWAY_CPU, LOAD_CPU],
                                      check=True, capture_output=True, text=True).stdout)
    cpu, took = floor["cpu_us_per_send"], floor["round_ms"]
    return (f"(l) floor: bare send() of 120 bytes to each of {WS_SUBSCRIBERS:,} loopback sockets, one core",
            f"{took['median']:.1f} ms per round of {WS_SUBSCRIBERS:,} sends ({took['min']:.1f} to {took['max']:.1f} over "
            f"{floor['rounds']} rounds), {cpu['median']:.2f} µs of the sender's CPU per send (bench/sendfloor.c)",
            "the least a round on one session can take")


def section_l_router(router, sessions):
    """(l) through a router: `router(gateway)` starts it in front of the gateway (see HiveRouter);
    subscribers connect to the router's WebSocket URL, webhooks go to the gateway."""
    log(f"(l): the same through Hive Router")
    return live_rows(" through Hive Router 0.2.5", live_run(WS_SUBSCRIBERS, sessions, router),
                     live_run(WS_SUBSCRIBERS, 1, router))


def print_table(commit, dirty, cpu, rows):
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"gateway on CPU {GATEWAY_CPU}, load on CPU {LOAD_CPU}")
    print(f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit}{' (with local changes)' if dirty else ''}; "
          f"median of {RUNS} runs unless said")
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
