"""The HTTP listeners of `serve` as the kubelet and Prometheus meet them, through the real
binary: probes on a listener of their own (issue 16, item 2), idle connections bounded by
time, an honest /healthz when the socket is gone, and a clean start-up log (issue 15)."""

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from provider_harness import SLOW, Provider

# Above the metrics listener's connection limit (128): the probes must not care.
IDLE_CONNECTIONS = 200


def port_of(p, what):
    """The port p logged for a listener: "health probes", "metrics" or "health and metrics"."""
    pattern = r'"msg":"%s on \S+ \(port (\d+)\)' % re.escape(what)
    deadline = time.monotonic() + 10 * SLOW
    while time.monotonic() < deadline:
        m = re.search(pattern, p.logs())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no %s port in the log: %s" % (what, p.logs()))


def get(port, path, timeout=10):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=timeout * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def apart(emulator, tmp_path):
    """serve with the probes and /metrics on listeners of their own, as the DaemonSet runs it."""
    p = Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0",
                                           "--probe-addr", "127.0.0.1:0"]).start()
    p.probes, p.metrics = port_of(p, "health probes"), port_of(p, "metrics")
    yield p
    p.stop()


def test_each_listener_serves_its_own_paths(apart):
    assert apart.probes != apart.metrics
    assert get(apart.probes, "/healthz") == (200, "ok\n")
    assert get(apart.probes, "/readyz") == (200, "ok\n")
    status, body = get(apart.metrics, "/metrics")
    assert status == 200 and "mpcsi_key_epoch" in body
    assert get(apart.probes, "/metrics")[0] == 404
    assert get(apart.metrics, "/healthz")[0] == 404
    assert get(apart.metrics, "/readyz")[0] == 404


def test_idle_connections_to_metrics_do_not_starve_the_probes(apart):
    held = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            try:
                held.append(socket.create_connection(("127.0.0.1", apart.metrics), timeout=5))
            except OSError:
                break  # refused past the limit: the point is that they are held
        assert len(held) >= 16, "could not even open the 16 connections of the old limit"
        t0 = time.monotonic()
        assert get(apart.probes, "/healthz", timeout=5) == (200, "ok\n")
        assert get(apart.probes, "/readyz", timeout=5) == (200, "ok\n")
        assert time.monotonic() - t0 < 5 * SLOW
    finally:
        for s in held:
            s.close()


def test_an_idle_connection_is_closed_after_the_timeout(apart):
    for port in (apart.probes, apart.metrics):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.settimeout(60 * SLOW)
        t0 = time.monotonic()
        try:
            assert s.recv(16) == b""  # closed by the server, nothing sent
        finally:
            s.close()
        assert time.monotonic() - t0 < 30 * SLOW


def test_healthz_says_the_socket_is_gone(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--probe-addr", "127.0.0.1:0"]).start()
    try:
        port = port_of(p, "health probes")
        assert get(port, "/healthz") == (200, "ok\n")
        os.unlink(p.socket)
        t0 = time.monotonic()
        status, body = get(port, "/healthz")
        assert status == 503
        assert "socket %s is gone" % p.socket in body
        assert "Deadline" not in body
        # Said at once, not after a Version call's timeout.
        assert time.monotonic() - t0 < 2 * SLOW
    finally:
        p.stop()


def test_healthz_says_the_socket_was_replaced(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--probe-addr", "127.0.0.1:0"]).start()
    try:
        port = port_of(p, "health probes")
        os.unlink(p.socket)
        other = socket.socket(socket.AF_UNIX)
        other.bind(p.socket)
        other.listen()
        status, body = get(port, "/healthz")
        other.close()
        assert status == 503
        assert "was replaced" in body
    finally:
        p.stop()


def test_start_up_logs_no_libmicrohttpd_complaint(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0",
                                           "--probe-addr", "127.0.0.1:0"]).start()
    try:
        port_of(p, "metrics")
        port_of(p, "health probes")
    finally:
        p.stop()
    warnings = [json.loads(line) for line in p.logs().splitlines()
                if line.startswith("{") and '"level":"warn"' in line]
    assert not [w for w in warnings if "health server" in w["msg"]], warnings
    assert "MHD_OPTION" not in p.logs()
