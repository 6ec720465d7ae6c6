"""Health, readiness, metrics and the per-Mount log line, through the real `serve`."""

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from provider_harness import Provider

SCOPE = "skatteetaten:testapi"


def with_metrics(p):
    """p, started with --metrics-addr 127.0.0.1:0, and p.http its base URL."""
    m = None
    deadline = time.time() + 10
    while not m and time.time() < deadline:
        m = re.search(r"health and metrics on \S+ \(port (\d+)\)", p.logs())
        time.sleep(0.05)
    assert m, p.logs()
    p.http = "http://127.0.0.1:%s" % m.group(1)
    return p


@pytest.fixture
def served(emulator, tmp_path):
    p = with_metrics(Provider(emulator, tmp_path,
                              args=["--metrics-addr", "127.0.0.1:0"]).start())
    yield p
    p.stop()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, **labels):
    """The value of one series, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def test_healthz_and_readyz(served, emulator):
    # Short-lived admin tokens, so readiness soon has to get a new one.
    emulator.settings(admin_token_lifetime=2)
    status, body = get(served.http + "/healthz")
    assert status == 200 and body.strip() == "ok"
    status, body = get(served.http + "/readyz")
    assert status == 200, body
    assert get(served.http + "/nope")[0] == 404

    emulator.settings(revoke_admin=True)
    deadline = time.time() + 15
    while status == 200 and time.time() < deadline:
        time.sleep(0.5)
        status, body = get(served.http + "/readyz")
    assert status == 503 and "invalid_grant" in body, body
    # Liveness is about the provider itself: still fine while DigDir refuses us.
    assert get(served.http + "/healthz")[0] == 200
    emulator.settings(revoke_admin=False)
    deadline = time.time() + 15
    while status != 200 and time.time() < deadline:
        time.sleep(0.5)
        status, body = get(served.http + "/readyz")
    assert status == 200, body


def test_metrics_count_mounts_cache_and_upstream(served):
    served.mount("team-a", "payments", scopes=SCOPE)
    served.mount("team-a", "payments", scopes=SCOPE)
    with pytest.raises(Exception):
        served.mount("team-a", "default", scopes=SCOPE)
    status, text = get(served.http + "/metrics")
    assert status == 200
    assert metric(text, "mpcsi_mounts_total", result="ok", kind="none") == 2
    assert metric(text, "mpcsi_mounts_total", result="error", kind="permission") == 1
    assert metric(text, "mpcsi_cache_hits_total") == 1
    assert metric(text, "mpcsi_cache_misses_total") >= 1
    assert metric(text, "mpcsi_jwks_uploads_total") == 1
    assert metric(text, "mpcsi_keys_derived_total") >= 2
    assert metric(text, "mpcsi_upstream_requests_total", service="digdir",
                  endpoint="POST /clients", status="201") == 1
    assert metric(text, "mpcsi_mount_duration_seconds_count") == 3
    assert metric(text, "mpcsi_key_epoch") == int(time.time()) // (30 * 24 * 3600)


def test_one_log_line_per_mount(served):
    served.mount("team-a", "payments", scopes=SCOPE, pod_name="payments-abc")
    served.mount("team-a", "payments", scopes=SCOPE, pod_name="payments-def")
    lines = [json.loads(l) for l in served.logs().splitlines() if l.startswith("{")]
    mounts = [l for l in lines if l.get("msg") == "mount"]
    assert len(mounts) == 2
    m, hit = mounts
    assert m["namespace"] == "team-a" and m["pod"] == "payments-abc" and m["app"] == "payments"
    assert m["result"] == "ok" and float(m["duration_ms"]) > 0
    # The first Mount went to DigDir (info); the next pod's, from memory, is routine (debug).
    assert (m["level"], m["cache"]) == ("info", "miss")
    assert (hit["level"], hit["cache"], hit["pod"]) == ("debug", "hit", "payments-def")
    assert hit["client_id"] == m["client_id"]
    # Each request upstream is one debug line naming the endpoint, never the URL.
    upstream = [l["msg"] for l in lines if l.get("level") == "debug" and
                l["msg"].startswith(("digdir ", "maskinporten "))]
    assert any(re.fullmatch(r"digdir POST /clients: HTTP 201 after \d+ ms \(attempt 1\)", u)
               for u in upstream), upstream
    assert not [u for u in upstream if "://" in u], upstream
    assert re.fullmatch(r"[0-9a-f-]{36}", m["client_id"])


def test_worker_answered_mount_of_a_known_client_logs_a_cache_hit(emulator, tmp_path):
    """With files written by the provider every Mount goes to a worker; the log still tells
    the first pod's Mount (DigDir provisioned the client) from the next (all from memory)."""
    kubelet = tmp_path / "kubelet"
    targets = []
    for uid in ("uid-1", "uid-2"):
        t = kubelet / "pods" / uid / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
        t.mkdir(parents=True)
        targets.append(str(t))
    p = with_metrics(Provider(emulator, tmp_path, args=[
        "--write-mode", "provider", "--kubelet-dir", str(kubelet),
        "--metrics-addr", "127.0.0.1:0"]).start())
    try:
        for pod, target in zip(("payments-abc", "payments-def"), targets):
            p.mount("team-a", "payments", scopes=SCOPE, pod_name=pod, target_path=target)
        before = emulator.counts()
        p.mount("team-a", "payments", scopes=SCOPE, pod_name="payments-abc",
                target_path=targets[0])
        assert emulator.counts() == before
        lines = [json.loads(l) for l in p.logs().splitlines() if l.startswith("{")]
        mounts = [(m["pod"], m["level"], m["cache"]) for m in lines if m.get("msg") == "mount"]
        assert mounts == [("payments-abc", "info", "miss"), ("payments-def", "info", "hit"),
                          ("payments-abc", "info", "hit")]
        # The metrics count each Mount once, as the log does.
        status, text = get(p.http + "/metrics")
        assert status == 200
        assert metric(text, "mpcsi_cache_misses_total") == 1
        assert metric(text, "mpcsi_cache_hits_total") == 2
    finally:
        p.stop()
