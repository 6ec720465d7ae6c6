"""`serve` starting, stopping and being replaced, through the real binary.

- The socket path belongs to one live provider at a time (issue 15, bug 1): a second
  instance refuses a live socket, waits for it when told to, takes it over once the old
  one stops listening, and the old one's exit leaves the new socket alone. The rolling
  update is reproduced as it happens: the old pod drains a slow Mount while the new pod
  starts on the same path.
- SIGTERM with the shipped defaults cancels upstream work and exits well inside the
  DaemonSet's terminationGracePeriodSeconds (issue 16, item 9); the process does not
  linger after "stopped" (issue 15).
- Idle gRPC connections are closed (issue 16, item 10).
"""

import concurrent.futures
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
import yaml

from provider_harness import ROOT, SLOW, VERSION, Provider, provider_pb2

SCOPE = "skatteetaten:testapi"
SERVING = "serving v1alpha1.CSIDriverProvider"


def wait_for(pred, timeout, what):
    """pred()'s first truthy value, polled until timeout (stretched by SLOW)."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout * SLOW, what))


def start_beside(emu, tmp_path, first, name, args=()):
    """A second `serve` on first's socket path, started and not waited for: Provider.start
    would take the first one's answer for its own."""
    p = Provider(emu, tmp_path, name=name, seed_file=first.seed_file, args=list(args))
    p.socket = first.socket
    p._log = open(p.log_path, "ab")
    p.proc = subprocess.Popen(p.command(), stdout=p._log, stderr=p._log)
    return p


def inode(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def version_on(path, timeout=5):
    """Version through a fresh channel on path: whoever holds the socket now answers."""
    with grpc.insecure_channel("unix:" + path,
                               options=[("grpc.default_authority", "localhost")]) as ch:
        call = ch.unary_unary(VERSION,
                              request_serializer=provider_pb2.VersionRequest.SerializeToString,
                              response_deserializer=provider_pb2.VersionResponse.FromString)
        return call(provider_pb2.VersionRequest(version="v1alpha1"), timeout=timeout * SLOW)


def digdir_asked(emu):
    """Whether a request reached DigDir's admin API (counted on arrival, before any delay)."""
    return any(" /api/" in k for k in emu.counts())


def shipped_grace_seconds():
    with open(os.path.join(ROOT, "deploy", "daemonset.yaml"), encoding="utf-8") as f:
        ds = yaml.safe_load(f)
    return ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


# The settings that decide how long a stop takes; the binary's defaults unless the ConfigMap
# sets them.
STOP_SETTINGS = ("MPCSI_SHUTDOWN_GRACE", "MPCSI_REQUEST_TIMEOUT", "MPCSI_CONNECT_TIMEOUT",
                 "MPCSI_MOUNT_TIMEOUT")


def shipped_stop_flags():
    """Flags for what deploy/configmap.yaml sets of STOP_SETTINGS."""
    with open(os.path.join(ROOT, "deploy", "configmap.yaml"), encoding="utf-8") as f:
        data = yaml.safe_load(f)["data"]
    flags = []
    for var in STOP_SETTINGS:
        if var in data:
            flags += ["--" + var[len("MPCSI_"):].lower().replace("_", "-"), data[var]]
    return flags


# -- the socket path ----------------------------------------------------------------------

def test_a_second_provider_refuses_a_live_socket(emulator, tmp_path):
    a = Provider(emulator, tmp_path, name="a").start()
    b = None
    try:
        before = inode(a.socket)
        b = start_beside(emulator, tmp_path, a, "b", args=["--socket-wait", "0"])
        rc = b.proc.wait(30 * SLOW)
        assert rc != 0
        assert "another provider is serving on %s" % a.socket in b.logs()
        assert "removed stale socket" not in b.logs()
        # The first one's socket is where it was, and it still answers.
        assert inode(a.socket) == before
        assert a.version().version == "v1alpha1"
        assert a.proc.poll() is None
    finally:
        if b:
            b.stop()
        assert a.stop() == 0


def test_a_waiting_provider_takes_over_once_the_old_one_stops(emulator, tmp_path):
    a = Provider(emulator, tmp_path, name="a").start()
    b = start_beside(emulator, tmp_path, a, "b", args=["--socket-wait", "60s"])
    try:
        wait_for(lambda: "waiting up to 60000 ms" in b.logs(), 30, "b to wait for a")
        assert b.proc.poll() is None and SERVING not in b.logs()
        assert a.version().version == "v1alpha1"
        assert a.stop() == 0
        wait_for(lambda: SERVING in b.logs(), 30, "b to serve: " + b.logs())
        assert "taking it over" in b.logs()
        assert version_on(b.socket).version == "v1alpha1"
    finally:
        assert b.stop() == 0
    # b removed its own socket on exit.
    assert not os.path.exists(b.socket)


def test_the_old_providers_exit_leaves_the_new_socket_in_place(emulator, tmp_path):
    """A rolling update: the old pod drains a Mount stuck on a slow DigDir while the new pod
    starts on the same path; the old one exits last."""
    a = Provider(emulator, tmp_path, name="old").start()
    b = start_beside(emulator, tmp_path, a, "new")
    try:
        wait_for(lambda: "waiting up to" in b.logs(), 30, "the new provider to wait")
        emulator.fault(path="^/api/v1/", delay=60)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(a.mount, "team-roll", "app", scopes=SCOPE)
            wait_for(lambda: digdir_asked(emulator), 30,
                     "the old provider's Mount to reach DigDir")
            a.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: SERVING in b.logs(), 30, "the new provider to serve")
            new = inode(b.socket)
            # The race itself: the new one serves while the old one still drains.
            assert a.proc.poll() is None, a.logs()
            with pytest.raises(grpc.RpcError):
                fut.result(timeout=60 * SLOW)
        assert a.proc.wait(60 * SLOW) == 0
        assert os.path.exists(b.socket), "the old provider's exit removed the new socket"
        assert inode(b.socket) == new
        assert version_on(b.socket).version == "v1alpha1"
        assert "is another provider's socket now: left in place" in a.logs()
    finally:
        emulator.clear_faults()
        a.stop()
        assert b.stop() == 0


def test_exit_leaves_a_socket_that_replaced_ours(emulator, tmp_path):
    """Whoever replaced the socket while this provider ran owns the path now: neither our
    exit nor gRPC's own clean-up of its listening path may remove it."""
    a = Provider(emulator, tmp_path, name="a").start()
    other = socket.socket(socket.AF_UNIX)
    try:
        os.unlink(a.socket)
        other.bind(a.socket)
        other.listen()
        theirs = inode(a.socket)
        assert a.stop() == 0
        assert os.path.exists(a.socket), "the exiting provider removed a socket not its own"
        assert inode(a.socket) == theirs
        assert "is another provider's socket now: left in place" in a.logs()
    finally:
        other.close()


def test_a_socket_nobody_listens_on_is_replaced(emulator, tmp_path):
    a = Provider(emulator, tmp_path, name="a")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(a.socket)
    stale.close()  # what a killed provider leaves behind
    a.start()
    try:
        assert "removed stale socket" in a.logs()
    finally:
        assert a.stop() == 0


def test_anything_but_a_socket_is_left_alone(emulator, tmp_path):
    a = Provider(emulator, tmp_path, name="a")
    with open(a.socket, "w") as f:
        f.write("not a socket")
    with pytest.raises(RuntimeError):
        a.start()
    a.stop()
    assert a.proc.returncode != 0
    assert "is not a socket: refusing to remove it" in a.logs()
    with open(a.socket) as f:
        assert f.read() == "not a socket"


# -- stopping -----------------------------------------------------------------------------

def test_sigterm_cancels_upstream_work_well_within_the_grace_period(emulator, tmp_path):
    """With the shipped settings (the DaemonSet's grace period, the ConfigMap over the
    binary's defaults), a Mount stuck on a DigDir that does not answer for a minute is
    cancelled: it gets an error, and the process exits long before the kubelet's SIGKILL."""
    grace = shipped_grace_seconds()
    p = Provider(emulator, tmp_path, args=shipped_stop_flags()).start()
    emulator.fault(path="^/api/v1/", delay=60)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(p.mount, "team-term", "slow-app", scopes=SCOPE)
            wait_for(lambda: digdir_asked(emulator), 30,
                     "the Mount to reach DigDir")
            t0 = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as e:
                fut.result(timeout=grace * SLOW)
            rc = p.proc.wait(grace * SLOW)
            elapsed = time.monotonic() - t0
    finally:
        emulator.clear_faults()
        p.stop()
    assert rc == 0
    assert elapsed < grace / 2 * SLOW, "exit %.1f s after SIGTERM" % elapsed
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith("maskinporten: ")
    assert "shutting down" in e.value.details()
    assert "cancelling their upstream requests" in p.logs()


def test_exit_follows_stopped_promptly(emulator, tmp_path):
    """The driver keeps its connection open and the kubelet keeps probing: neither may hold
    the exit up (a liveness check used to wait 3 s on the closing socket, each)."""
    p = Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0"]).start()
    port = wait_for(lambda: re.search(r"health and metrics on \S+ \(port (\d+)\)", p.logs()),
                    10, "the metrics port").group(1)
    url = "http://127.0.0.1:%s/healthz" % port
    urllib.request.urlopen(url, timeout=10).read()
    p.mount("team-exit", "app", scopes=SCOPE)  # the channel stays open, as the driver's does
    done = threading.Event()

    def probe():
        while not done.is_set():
            try:
                urllib.request.urlopen(url, timeout=10).read()
            except OSError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        rc = p.proc.wait(30 * SLOW)
        elapsed = time.monotonic() - t0
    finally:
        done.set()
        t.join()
        p.stop()
    assert rc == 0
    assert "stopped" in p.logs()
    assert elapsed < 3 * SLOW, "exit %.1f s after SIGTERM" % elapsed


def logged_at(p, msg):
    """Wall-clock time of the first log line whose msg is msg."""
    for line in p.logs().splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == msg:
            t = datetime.datetime.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            return t.replace(tzinfo=datetime.timezone.utc).timestamp()
    raise AssertionError("%r not logged: %s" % (msg, p.logs()))


def test_probes_during_a_drain_do_not_hold_the_exit(emulator, tmp_path):
    """The kubelet keeps probing while a slow Mount drains: probes must answer at once, not
    wait on the closed socket, so nothing is left to wait for after "stopped"."""
    p = Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0"]).start()
    port = wait_for(lambda: re.search(r"health and metrics on \S+ \(port (\d+)\)", p.logs()),
                    10, "the metrics port").group(1)
    url = "http://127.0.0.1:%s/healthz" % port
    emulator.fault(path="^/api/v1/", delay=60)
    done = threading.Event()

    def probe():
        while not done.is_set():
            try:
                urllib.request.urlopen(url, timeout=10).read()
            except OSError:
                pass

    probes = [threading.Thread(target=probe, daemon=True) for _ in range(4)]
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(p.mount, "team-drain", "app", scopes=SCOPE)
            wait_for(lambda: digdir_asked(emulator), 30, "the Mount to reach DigDir")
            p.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopping: draining" in p.logs(), 10, "the drain")
            # Staggered, so that some probe is always part-way through a check that would
            # wait on the socket (3 s), whenever the drain ends.
            for t in probes:
                t.start()
                time.sleep(0.7)
            rc = p.proc.wait(60 * SLOW)
            exited = time.time()
            with pytest.raises(grpc.RpcError):
                fut.result(timeout=10 * SLOW)
    finally:
        done.set()
        emulator.clear_faults()
        for t in probes:
            if t.is_alive():
                t.join()
        p.stop()
    assert rc == 0
    assert exited - logged_at(p, "stopped") < 1.0 * SLOW
    assert "health: /livez failing: the provider is shutting down" in p.logs()


# -- idle connections ----------------------------------------------------------------------

def http2_frames_until_close(path, timeout):
    """Opens an HTTP/2 connection on the socket, sends nothing after the preface and SETTINGS,
    and returns the frame types the server sends until it closes (None: it did not close)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    s.settimeout(timeout)
    frames, buf = [], b""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return frames
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                frames.append(buf[3])
                buf = buf[9 + int.from_bytes(buf[:3], "big"):]
    except socket.timeout:
        return None
    finally:
        s.close()


def test_idle_grpc_connections_are_closed(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--connection-idle", "1s"]).start()
    try:
        frames = http2_frames_until_close(p.socket, 15 * SLOW)
        assert frames is not None, "the idle connection was not closed"
        assert 7 in frames  # GOAWAY first
        # A client that reconnects is served as before.
        assert version_on(p.socket).version == "v1alpha1"
    finally:
        assert p.stop() == 0
