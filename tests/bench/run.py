#!/usr/bin/python3
"""`make bench`: the provider's figures, each beside a baseline measured in the same run.

Starts the emulator and `serve` the way tests/integration/provider_harness.py does, drives
the provider with build/bench/bench_client (C, gRPC core, driver_call) and prints one table:

    figure | value | baseline | ratio | target | ok

    /usr/bin/python3 tests/bench/run.py [--quick] [--json FILE]

Environment: MCP_BIN (the provider), MCP_PYDIR (provider_pb2), MCP_BENCHDIR (bench binaries).
--quick uses small counts (under a minute) to check that the harness works; its figures are
not the targets' figures. Provider CPU comes from /proc/<pid>/stat, memory from
/proc/<pid>/status. Never prints a Mount answer: it holds a private key.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))

import provider_harness as ph  # noqa: E402
from harness import Emulator  # noqa: E402

BENCHDIR = os.environ.get("MCP_BENCHDIR") or os.path.join(ROOT, "build", "bench")
CLIENT = os.path.join(BENCHDIR, "bench_client")
KEYS = os.path.join(BENCHDIR, "bench_keys")
SCOPES = "nav:test/api"
TICK = os.sysconf("SC_CLK_TCK")

# Emulator count keys (tests/emulator/emulator.py route_template).
ADMIN_TOKENS = "token:admin"
LISTINGS = "GET /api/v1/clients"
CREATES = "POST /api/v1/clients"
JWKS_READS = "GET /api/v1/clients/{id}/jwks"
JWKS_UPLOADS = "POST /api/v1/clients/{id}/jwks"


class BenchProvider(ph.Provider):
    """serve at the production log level (info: one line per Mount), plus extra flags."""

    def command(self):
        return [ph.BIN, "serve", "--socket", self.socket, "--log-level", "info"] + \
            ph.upstream_args(self.emu, self.seed_file, self.cluster) + self.args

    @property
    def pid(self):
        return self.proc.pid

    def cpu(self):
        """User + system CPU seconds of the provider so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def ctxsw(self):
        """Context switches, voluntary or not, of the provider's live threads so far."""
        n, task = 0, "/proc/%d/task" % self.pid
        for tid in os.listdir(task):
            try:
                with open("%s/%s/status" % (task, tid)) as f:
                    n += sum(int(line.split()[1]) for line in f
                             if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
            except FileNotFoundError:  # the thread left meanwhile
                pass
        return n

    def mem_mib(self, key):
        """VmHWM or VmRSS in MiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        raise KeyError(key)


def client(p, mode, **kw):
    """Runs bench_client against p; returns its JSON figures."""
    cmd = [CLIENT, mode, "--socket", p.socket]
    if mode == "mount":
        kw.setdefault("scopes", SCOPES)
    for k, v in kw.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=900)
    if not out.stdout.strip():
        raise RuntimeError("bench_client failed (%d): %s" % (out.returncode, out.stderr[-500:]))
    res = json.loads(out.stdout)
    if res["errors"]:
        sys.stderr.write("bench: %s %s: %d errors (first status %d)\n" %
                         (mode, kw, res["errors"], res["first_error_status"]))
    return res


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def digdir_requests(d):
    return sum(v for k, v in d.items() if " /api/" in k)


def digdir_writes(d):
    return sum(v for k, v in d.items()
               if " /api/" in k and k.split()[0] in ("POST", "PUT", "PATCH", "DELETE"))


class Table:
    def __init__(self):
        self.rows = []
        self.notes = []

    def add(self, figure, value, baseline=None, target="", ok=None, unit=""):
        ratio = None
        if baseline not in (None, 0) and value is not None:
            ratio = value / baseline
        self.rows.append({"figure": figure, "value": value, "baseline": baseline, "ratio": ratio,
                          "target": target, "ok": ok, "unit": unit})

    def note(self, text):
        self.notes.append(text)

    def print(self):
        def num(v):
            if v is None:
                return ""
            if isinstance(v, float):
                return "%.3g" % v if abs(v) < 100 else "%.0f" % v
            return str(v)

        cells = [("figure", "value", "baseline", "ratio", "target", "ok")]
        for r in self.rows:
            ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
            ratio = "" if r["ratio"] is None else "%.2fx" % r["ratio"]
            fig = r["figure"] + (" (%s)" % r["unit"] if r["unit"] else "")
            cells.append((fig, num(r["value"]), num(r["baseline"]), ratio, r["target"], ok))
        widths = [max(len(c[i]) for c in cells) for i in range(6)]
        for i, c in enumerate(cells):
            print(" | ".join(c[j].ljust(widths[j]) if j in (0, 4) else c[j].rjust(widths[j])
                             for j in range(6)).rstrip())
            if i == 0:
                print("-+-".join("-" * w for w in widths))
        for n in self.notes:
            print("note: " + n)
        checked = [r for r in self.rows if r["ok"] is not None]
        print("targets met: %d of %d" % (sum(1 for r in checked if r["ok"]), len(checked)))


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


def new_provider(emu, tmp, name, args=(), seed_file=None):
    return BenchProvider(emu, tmp, name=name, args=list(args), seed_file=seed_file).start()


# -- 1. warm Mount beside Version ----------------------------------------------


def bench_warm(emu, tmp, t, q):
    p = new_provider(emu, tmp, "warm")
    try:
        apps, pods = 16, 4
        client(p, "mount", apps=apps, pods=pods, requests=apps * pods, threads=8, prefix="warm")
        client(p, "mount", apps=apps, pods=pods, requests=apps * pods, threads=8, prefix="warm")
        for c in (1, 4, 16):
            v_runs, m_runs = [], []
            for _ in range(q["rounds"]):
                c0 = p.cpu()
                v = client(p, "version", threads=c, seconds=q["seconds"])
                c1 = p.cpu()
                m = client(p, "mount", threads=c, seconds=q["seconds"], apps=apps, pods=pods,
                           prefix="warm")
                c2 = p.cpu()
                v["cpu_us"] = (c1 - c0) * 1e6 / max(v["count"], 1)
                m["cpu_us"] = (c2 - c1) * 1e6 / max(m["count"], 1)
                v_runs.append(v)
                m_runs.append(m)

            def med(runs, k):
                return statistics.median(r[k] for r in runs)

            vm, mm = med(v_runs, "median_us"), med(m_runs, "median_us")
            vp, mp = med(v_runs, "p99_us"), med(m_runs, "p99_us")
            vt, mt = med(v_runs, "throughput_per_s"), med(m_runs, "throughput_per_s")
            errors = sum(r["errors"] for r in v_runs + m_runs)
            t.add("warm.median@%d" % c, mm, vm, "<= 1.5x Version", mm <= 1.5 * vm, "us")
            t.add("warm.p99@%d" % c, mp, vp, "<= 3x Version", mp <= 3 * vp, "us")
            if c == 16:
                t.add("warm.throughput@%d" % c, mt, vt, ">= 0.6x Version", mt >= 0.6 * vt, "/s")
            else:
                t.add("warm.throughput@%d" % c, mt, vt, "", None, "/s")
            t.add("warm.provider_cpu@%d" % c, med(m_runs, "cpu_us"), med(v_runs, "cpu_us"),
                  "", None, "us/call")
            t.add("warm.errors@%d" % c, errors, None, "0", errors == 0)
    finally:
        p.stop()


# -- 2. cold Mount: a new client, and a restarted provider ---------------------


def bench_cold(emu, tmp, t, q):
    emu.reset()
    p = new_provider(emu, tmp, "cold")
    seed = p.seed_file
    try:
        before = emu.counts()
        r = client(p, "mount", requests=1, prefix="cold")
        d = delta(emu.counts(), before)
    finally:
        p.stop()
    t.note("cold new client, emulator counts: %s" % json.dumps(d, sort_keys=True))
    t.add("cold.new.wall", r["median_us"] / 1000, None, "", None, "ms")
    t.add("cold.new.errors", r["errors"], None, "0", r["errors"] == 0)
    t.add("cold.new.admin_tokens", d.get(ADMIN_TOKENS, 0), None, "<= 1",
          d.get(ADMIN_TOKENS, 0) <= 1)
    # The DigDir issue allows one lookup, and also demands that two nodes creating the
    # same client at once leave one: only a listing sent after the create can tell, so
    # a new client costs the lookup plus that confirming listing (see README, DigDir).
    t.add("cold.new.client_listings", d.get(LISTINGS, 0), None, "<= 2 (lookup + confirm)",
          d.get(LISTINGS, 0) <= 2)
    t.add("cold.new.creates", d.get(CREATES, 0), None, "1", d.get(CREATES, 0) == 1)
    t.add("cold.new.jwks_reads", d.get(JWKS_READS, 0), None, "0 (the upload answers with the set)",
          d.get(JWKS_READS, 0) == 0)
    t.add("cold.new.jwks_uploads", d.get(JWKS_UPLOADS, 0), None, "1", d.get(JWKS_UPLOADS, 0) == 1)

    p = new_provider(emu, tmp, "cold-restart", seed_file=seed)
    try:
        before = emu.counts()
        r = client(p, "mount", requests=1, prefix="cold")
        d = delta(emu.counts(), before)
    finally:
        p.stop()
    t.note("cold restarted provider, emulator counts: %s" % json.dumps(d, sort_keys=True))
    t.add("cold.restart.wall", r["median_us"] / 1000, None, "", None, "ms")
    t.add("cold.restart.digdir_writes", digdir_writes(d), None, "0", digdir_writes(d) == 0)
    t.add("cold.restart.errors", r["errors"], None, "0", r["errors"] == 0)


# -- 3. burst: 200 concurrent Mounts for 20 new apps ---------------------------


def bench_burst(emu, tmp, t, q):
    emu.reset()
    apps, pods = q["burst_apps"], q["burst_pods"]
    n = apps * pods
    p = new_provider(emu, tmp, "burst")
    try:
        before = emu.counts()
        r = client(p, "mount", threads=n, requests=n, apps=apps, pods=pods, prefix="burst")
        d = delta(emu.counts(), before)
    finally:
        p.stop()
    t.note("burst %d Mounts / %d apps, emulator counts: %s" % (n, apps, json.dumps(d, sort_keys=True)))
    t.add("burst.wall", r["wall_s"], None, "", None, "s")
    t.add("burst.p99", r["p99_us"] / 1000, None, "", None, "ms")
    t.add("burst.errors", r["errors"], None, "0", r["errors"] == 0)
    t.add("burst.creates", d.get(CREATES, 0), None, str(apps), d.get(CREATES, 0) == apps)
    t.add("burst.jwks_uploads", d.get(JWKS_UPLOADS, 0), None, str(apps),
          d.get(JWKS_UPLOADS, 0) == apps)
    t.add("burst.admin_tokens", d.get(ADMIN_TOKENS, 0), None, "1", d.get(ADMIN_TOKENS, 0) == 1)
    t.add("burst.client_listings", d.get(LISTINGS, 0), None, "<= 2", d.get(LISTINGS, 0) <= 2)


# -- 4. rotation load and 5. memory, on one provider ---------------------------


def bench_idle_deployed(emu, tmp, t):
    """Idle as the DaemonSet runs it: health and metrics on, and the kubelet's probes answered
    (/readyz fetches Maskinporten's metadata and an admin token)."""
    emu.reset()
    p = new_provider(emu, tmp, "idle", args=["--metrics-addr", "127.0.0.1:0"])
    try:
        port, deadline = None, time.monotonic() + 10
        while port is None and time.monotonic() < deadline:
            for line in p.logs().splitlines():
                if "health and metrics on" in line:
                    port = line.rsplit("(port ", 1)[1].split(")")[0]
            time.sleep(0.05)
        if port is None:
            raise RuntimeError("the provider did not log its metrics port: %s" % p.logs())
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=15) as r:
                r.read()
        time.sleep(0.5)
        t.add("mem.idle_probed_hwm", p.mem_mib("VmHWM"), None, "", None, "MiB")
    finally:
        p.stop()


def bench_load(emu, tmp, t, q):
    bench_idle_deployed(emu, tmp, t)
    emu.reset()
    clients, pods = q["rot_clients"], q["rot_pods"]
    # Workers stay (--worker-idle 0): ctxsw() sums the live threads, and one that left
    # during the trickle would take its context switches with it.
    p = new_provider(emu, tmp, "load", args=["--workers", "8", "--worker-idle", "0"])
    try:
        time.sleep(0.5)
        idle = p.mem_mib("VmHWM")
        t.add("mem.idle_hwm", idle, None, "<= 20", idle <= 20, "MiB")

        log("provisioning %d clients" % clients)
        t0 = time.monotonic()
        r = client(p, "mount", threads=16, requests=clients, apps=clients, pods=1, prefix="load")
        prov = time.monotonic() - t0
        t.add("rotation.provision_%d_clients" % clients, prov, None, "", r["errors"] == 0, "s")
        t.add("mem.after_provision_%d_hwm" % clients, p.mem_mib("VmHWM"), None, "", None, "MiB")

        # A first pass over every pod, as fast as 16 callers go; then the same pods again
        # at the republish rate: kubelet republishes each volume about every
        # --rotation-poll-interval (2 min by default), a steady trickle, not a flood.
        before, c0 = emu.counts(), p.cpu()
        n = clients * pods
        r1 = client(p, "mount", threads=16, requests=n, apps=clients, pods=pods, prefix="load")
        c1, s1 = p.cpu(), p.ctxsw()
        rate = n / q["rot_period_s"]
        log("republishing %d pods at %.1f Mounts/s" % (n, rate))
        r2 = client(p, "mount", threads=4, requests=n, rate="%.3f" % rate, apps=clients,
                    pods=pods, prefix="load")
        c2, s2 = p.cpu(), p.ctxsw()
        d = delta(emu.counts(), before)
        t.add("rotation.cpu_per_1000_mounts", (c2 - c1) * 1000 / n, (c1 - c0) * 1000 / n, "",
              None, "s")
        t.add("rotation.ctxsw_per_mount", (s2 - s1) / n, None, "", None, "")
        t.note("server.c polls its completion queue on one thread: with a second poller on the "
               "same queue, a Mount at the republish rate cost 9.8 context switches and 0.9-1 ms "
               "of CPU, against 2.7 and 0.2-0.35 ms with one (measured when the second poller "
               "went; rotation.ctxsw_per_mount and rotation.cpu_per_1000_mounts are today's)")
        t.add("rotation.rate", r2["throughput_per_s"], rate, "", None, "/s")
        t.add("rotation.median", r2["median_us"], r1["median_us"], "", None, "us")
        t.add("rotation.digdir_requests", digdir_requests(d), None, "0", digdir_requests(d) == 0)
        t.add("rotation.errors", r1["errors"] + r2["errors"], None, "0",
              r1["errors"] + r2["errors"] == 0)
        t.add("rotation.flood_throughput", r1["throughput_per_s"], None, "", None, "/s")

        more = q["mem_clients"] - clients
        log("provisioning %d more clients" % more)
        t0 = time.monotonic()
        client(p, "mount", threads=16, requests=more, apps=more, pods=1, prefix="load",
               offset=clients)
        t.add("mem.provision_%d_more_clients" % more, time.monotonic() - t0, None, "", None, "s")
        t.add("mem.after_provision_%d_hwm" % q["mem_clients"], p.mem_mib("VmHWM"), None, "",
              None, "MiB")
        total = q["mem_clients"] * q["mem_pods"]
        runs = []
        for _ in range(2):
            r = client(p, "mount", threads=16, requests=total, apps=q["mem_clients"],
                       pods=q["mem_pods"], prefix="load")
            runs.append((p.mem_mib("VmHWM"), p.mem_mib("VmRSS"), r["errors"]))
        label = "%d_clients" % q["mem_clients"]
        t.add("mem.%s_hwm" % label, runs[0][0], None, "<= 64", runs[0][0] <= 64, "MiB")
        t.add("mem.%s_rss_run2" % label, runs[1][1], runs[0][1], "<= 1.05x run 1",
              runs[1][1] <= 1.05 * runs[0][1], "MiB")
        t.add("mem.%s_hwm_run2" % label, runs[1][0], runs[0][0], "<= 1.05x run 1",
              runs[1][0] <= 1.05 * runs[0][0], "MiB")
        t.add("mem.errors", runs[0][2] + runs[1][2], None, "0", runs[0][2] + runs[1][2] == 0)
    finally:
        p.stop()

    # The cache at its bound: half the clients fit, every Mount of the others evicts.
    cap = q["mem_clients"] // 2
    p = new_provider(emu, tmp, "bound", args=["--cache-size", str(cap)])
    try:
        t0 = time.monotonic()
        r = client(p, "mount", threads=16, requests=q["mem_clients"], apps=q["mem_clients"],
                   pods=1, prefix="load")
        wall = time.monotonic() - t0
        hwm = p.mem_mib("VmHWM")
        t.add("mem.cache_%d_of_%d_hwm" % (cap, q["mem_clients"]), hwm, None, "<= 64",
              hwm <= 64, "MiB")
        t.add("mem.cache_bound_wall", wall, None, "", r["errors"] == 0, "s")
    finally:
        p.stop()


# -- 6. scale: an organisation of 10,000 clients, nodes that restart ----------------


def digdir_bytes(b):
    return sum(v for k, v in b.items() if " /api/" in k)


def debug_ms(p, endpoint):
    """The times of the provider's requests to endpoint, from its debug lines."""
    out = []
    for line in p.logs().splitlines():
        if ("digdir %s: HTTP" % endpoint) in line:
            m = line.split(" after ", 1)
            if len(m) == 2:
                out.append(float(m[1].split(" ms", 1)[0]))
    return out


def restart_cost(emu, tmp, t, q, nodes, label, args):
    """Restarts every node; DigDir requests and bytes per restart, and the time from a
    restart to the first republish of a known app served."""
    reqs, sent, first = [], [], []
    for name, seed, apps in nodes:
        b0, c0 = emu.bytes_sent(), emu.counts()
        t0 = time.monotonic()
        p = new_provider(emu, tmp, name, args=args, seed_file=seed)
        try:
            r = client(p, "mount", requests=1, apps=1, pods=1, prefix=apps)
            first.append(time.monotonic() - t0)
            client(p, "mount", threads=4, requests=q["node_apps"], apps=q["node_apps"], pods=1,
                   prefix=apps)
            if r["errors"]:
                raise RuntimeError("republish after a restart failed")
        finally:
            p.stop()
        reqs.append(digdir_requests(delta(emu.counts(), c0)))
        sent.append(digdir_bytes(delta(emu.bytes_sent(), b0)))
    return statistics.median(reqs), statistics.median(sent), statistics.median(first)


def bench_scale(emu, tmp, t, q):
    emu.reset()
    org = q["org_clients"]
    emu.bulk_clients(org, description="prod:team-{i}:app")

    # One lookup of a new app against the whole organisation, on a fresh provider.
    p = new_provider(emu, tmp, "scale-lookup", args=["--log-level", "debug"])
    try:
        time.sleep(0.3)
        idle = p.mem_mib("VmHWM")
        b0 = emu.bytes_sent()
        r = client(p, "mount", requests=1, prefix="scale-new")
        hwm = p.mem_mib("VmHWM")
        listing_ms = debug_ms(p, "GET /clients")
        b = delta(emu.bytes_sent(), b0)
    finally:
        p.stop()
    label = "scale.lookup_%d" % org
    t.add(label + ".wall", r["median_us"] / 1000, None, "", r["errors"] == 0, "ms")
    t.add(label + ".listing_bytes", b.get(LISTINGS, 0), None, "", None, "B")
    t.add(label + ".listing_ms", min(listing_ms) if listing_ms else None, None, "", None, "ms")
    t.add(label + ".hwm", hwm, idle, "<= idle + 8 MiB", hwm <= idle + 8, "MiB")
    t.note("%s: %d listing(s) of %d bytes each, parsed as they streamed; the provider's peak RSS "
           "rose %.1f MiB over its idle peak" % (label, len(listing_ms),
                                                  b.get(LISTINGS, 0) // max(len(listing_ms), 1),
                                                  hwm - idle))

    # A burst of new apps in that organisation shares its listings.
    apps = q["burst_apps"]
    p = new_provider(emu, tmp, "scale-burst")
    try:
        c0 = emu.counts()
        r = client(p, "mount", threads=apps, requests=apps, apps=apps, pods=1,
                   prefix="scale-burst")
        d = delta(emu.counts(), c0)
    finally:
        p.stop()
    t.add("scale.burst_%d_new.listings" % apps, d.get(LISTINGS, 0), None, "<= 2",
          d.get(LISTINGS, 0) <= 2 and r["errors"] == 0)

    # Nodes restart: the state file against a listing (the state file off, as before it).
    nodes = []
    for n in range(q["nodes"]):
        name = "node%d" % n
        p = new_provider(emu, tmp, name)
        try:
            client(p, "mount", threads=4, requests=q["node_apps"], apps=q["node_apps"], pods=1,
                   prefix=name + "-app")
        finally:
            p.stop()
        nodes.append((name, p.seed_file, name + "-app"))
    base = restart_cost(emu, tmp, t, q, [(n + "-nostate", s, a) for n, s, a in nodes], "",
                        ["--state-file", ""])
    now = restart_cost(emu, tmp, t, q, nodes, "", [])
    per_app = now[0] / q["node_apps"]
    t.add("scale.restart.digdir_requests", now[0], base[0], "<= 2 per known app",
          per_app <= 2, "/node")
    t.add("scale.restart.digdir_bytes", now[1], base[1], "", None, "B/node")
    t.add("scale.restart.first_republish", now[2] * 1000, base[2] * 1000, "", None, "ms")
    t.note("restart of a node with %d known apps in an organisation of %d clients: %d requests "
           "and %d bytes with the state file, %d requests and %d bytes without" %
           (q["node_apps"], org, now[0], now[1], base[0], base[1]))
    # On paper: 1,000 nodes of 30 apps each restart once (a DaemonSet rollout).
    with_state = (now[0] / q["node_apps"] * 30 * 1000, now[1] / q["node_apps"] * 30 * 1000)
    listing = (base[0] / q["node_apps"] * 30 * 1000, base[1] * 1000)
    t.note("on paper, a rollout over 1,000 nodes x 30 apps: %.0f requests and %.0f MB to DigDir "
           "with the state file (%.1f requests and %.0f bytes per app), against about %.0f "
           "requests and %.0f MB when every node lists the organisation once" %
           (with_state[0], with_state[1] / 1e6, per_app, now[1] / q["node_apps"], listing[0],
            listing[1] / 1e6))

    # A cold new client with 100 ms added to every request at the emulator, and the
    # longest chain of its requests each sent after the one before was answered: the round
    # trips it makes one after another (requests sent side by side count once).
    emu.reset()
    p = new_provider(emu, tmp, "scale-rtt")
    try:
        client(p, "version", threads=1, seconds=0.2)
        emu.fault(path="^/", delay=q["rtt_s"])
        c0, t0 = emu.counts(), time.time()
        r = client(p, "mount", requests=1, prefix="scale-rtt")
        counts = delta(emu.counts(), c0)
        log_ = [e for e in emu.log() if e["start"] >= t0 and not e["path"].startswith("/_")]
    finally:
        emu.clear_faults()
        p.stop()
    rounds = chain_length(log_)
    requests = len(log_)
    rtt_ms = q["rtt_s"] * 1000
    t.add("scale.cold_new.wall@%dms" % rtt_ms, r["median_us"] / 1000, None, "", r["errors"] == 0,
          "ms")
    t.add("scale.cold_new.round_trips", rounds, requests, "<= 8 (8 needed)", rounds <= 8)
    t.note("cold new client, %d ms added per request: %d requests, %d of them one after "
           "another: %s" % (rtt_ms, requests, rounds,
                            " -> ".join("%s %s" % (e["method"], e["path"].split("?")[0])
                                        for e in sorted(log_, key=lambda e: e["start"]))))


def chain_length(requests):
    """The longest chain of requests in which each was sent after the one before it was
    answered (a longest path in an interval order, by dynamic programming)."""
    reqs = sorted(requests, key=lambda e: e["time"])
    best = []
    for i, e in enumerate(reqs):
        before = [best[j] for j in range(i) if reqs[j]["time"] <= e["start"]]
        best.append(1 + max(before, default=0))
    return max(best, default=0)


# -- 7. a burst of cold Mounts carrying large `secrets`, DigDir slow --------------


def settled_rss(p, timeout=10.0):
    """VmRSS once it stops falling (three equal readings 0.2 s apart), or after timeout."""
    last, same, deadline = None, 0, time.monotonic() + timeout
    while time.monotonic() < deadline and same < 3:
        time.sleep(0.2)
        rss = p.mem_mib("VmRSS")
        same = same + 1 if last is not None and abs(rss - last) < 0.25 else 0
        last = rss
    return last


def bench_secrets(emu, tmp, t, q):
    """Issue 16, item 5: cold Mounts with a 1 MiB `secrets` each (a large nodePublishSecretRef
    Secret), all at once, while every DigDir call takes secrets_delay_s: the requests wait for
    workers. Peak RSS is the figure to hold under the DaemonSet's 128 MiB limit, and RSS after
    the burst shows whether the memory went back."""
    emu.reset()
    n = q["secrets_mounts"]
    # The driver's own limit (the default since issue 15), given so older builds compare.
    p = new_provider(emu, tmp, "secrets", args=["--max-message", str(4 << 20)])
    try:
        time.sleep(0.5)
        idle = p.mem_mib("VmRSS")
        emu.fault(path="^/api/v1/", delay=q["secrets_delay_s"])
        log("%d cold Mounts with 1 MiB secrets, DigDir answering after %.1f s" %
            (n, q["secrets_delay_s"]))
        r = client(p, "mount", threads=n, requests=n, apps=n, pods=1, prefix="secrets",
                   secrets_bytes=1 << 20, timeout_ms=q["secrets_timeout_ms"])
        peak = p.mem_mib("VmHWM")
        emu.clear_faults()
        after = settled_rss(p)
    finally:
        p.stop()
    t.note("secrets burst of %d Mounts, answers by gRPC status: %s" %
           (n, json.dumps(r.get("statuses", {}), sort_keys=True)))
    t.add("secrets_burst.peak_rss", peak, None, "<= 128 (DaemonSet limit)", peak <= 128, "MiB")
    t.add("secrets_burst.rss_after", after, idle, "", None, "MiB")
    t.add("secrets_burst.wall", r["wall_s"], None, "", None, "s")


# -- 8. key derivation ------------------------------------------------------------


def bench_keys(t):
    out = subprocess.run([KEYS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=300)
    fig = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("_ms"):
            fig[parts[0]] = (float(parts[2]), float(parts[3]))
    if out.returncode != 0 or "keys.derive_ms" not in fig or "openssl.keygen_ms" not in fig:
        t.add("keys.derive", None, None, "<= 2x keygen", False, "ms")
        t.note("bench_keys failed: %s" % (out.stderr or out.stdout)[-300:])
        return
    d, k = fig["keys.derive_ms"], fig["openssl.keygen_ms"]
    t.add("keys.derive_median", d[0], k[0], "<= 2x OpenSSL keygen", d[0] <= 2 * k[0], "ms")
    t.add("keys.derive_p90", d[1], k[1], "", None, "ms")


QUICK = dict(rounds=1, seconds=0.3, burst_apps=4, burst_pods=5, rot_clients=20, rot_pods=4,
             rot_period_s=2, mem_clients=40, mem_pods=5, org_clients=1000, nodes=2, node_apps=3,
             rtt_s=0.05, secrets_mounts=60, secrets_delay_s=0.2, secrets_timeout_ms=20000)
FULL = dict(rounds=3, seconds=1.5, burst_apps=20, burst_pods=10, rot_clients=500, rot_pods=4,
            rot_period_s=120, mem_clients=1000, mem_pods=10, org_clients=10000, nodes=4,
            node_apps=30, rtt_s=0.1, secrets_mounts=600, secrets_delay_s=0.5,
            secrets_timeout_ms=30000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: checks the harness")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--only",
                    help="comma-separated sections: warm,cold,burst,load,secrets,scale,keys")
    a = ap.parse_args()
    q = QUICK if a.quick else FULL
    only = set(a.only.split(",")) if a.only else {"warm", "cold", "burst", "load", "secrets",
                                                  "scale", "keys"}
    for path in (CLIENT, KEYS, ph.BIN):
        if not os.access(path, os.X_OK):
            sys.exit("bench: %s is missing: run `make bench`" % path)

    t = Table()
    tmp = tempfile.mkdtemp(prefix="mcp-bench-")
    emu = Emulator(os.path.join(tmp, "emulator")).start()
    start = time.monotonic()
    try:
        for name, fn in (("warm", bench_warm), ("cold", bench_cold), ("burst", bench_burst),
                         ("load", bench_load), ("secrets", bench_secrets),
                         ("scale", bench_scale)):
            if name in only:
                log("section %s" % name)
                s = time.monotonic()
                fn(emu, tmp, t, q)
                log("section %s took %.1fs" % (name, time.monotonic() - s))
        if "keys" in only:
            log("section keys")
            bench_keys(t)
    finally:
        emu.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    t.note("total %.0fs%s" % (time.monotonic() - start, " (--quick: small counts)" if a.quick else ""))
    t.print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(t.rows, f, indent=1)


if __name__ == "__main__":
    main()
