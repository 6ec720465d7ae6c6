"""What the provider logs stays parseable and honest, whatever a request holds:
one whole record per line (valid JSON by default), long values cut between
characters, control characters escaped in text format, gRPC status details
valid UTF-8; and a request refused before it is parsed is logged with the
identity its attributes carry, never with its secrets."""

import json
import re

import grpc
import pytest

from provider_harness import SLOW, Provider, attributes

SCOPE = "skatteetaten:testapi"
EURO = "\u20ac"  # three bytes in UTF-8: a cut at a fixed byte count can split it
TOKENS_ATTR = "csi.storage.k8s.io/serviceAccount.tokens"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn |info |debug) ")


def hostile(n):
    """About n characters: 3-byte characters, newlines, quotes and a forged log line."""
    unit = EURO * 7 + "\n\"\\\t" + '{"time":"2099-01-01T00:00:00.000Z","level":"error","msg":"forged"}'
    return (unit * (n // len(unit) + 1))[:n]


def json_records(p):
    """Every line of p's log as JSON: fails on a line that is not one whole record."""
    with open(p.log_path, "rb") as f:
        raw = f.read()
    records = []
    for i, line in enumerate(raw.split(b"\n")[:-1]):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as e:
            pytest.fail("log line %d is not a JSON record (%s): %r" % (i, e, line[:300]))
        assert len(line) < 16384, "line %d of %d bytes: runtimes split it" % (i, len(line))
    assert raw.endswith(b"\n")
    return records


def unknown_key_mount(p, key):
    attrs = json.loads(attributes("team-l", "app", pod_name="pod-l", params={"scopes": SCOPE}))
    attrs[key] = "x"
    with pytest.raises(grpc.RpcError) as e:
        p.mount_raw(json.dumps(attrs), timeout=20 * SLOW)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details()


def quoted_key(details):
    m = re.search(r'unknown parameter "(.*)": the maskinporten', details, re.S)
    assert m, details
    return m.group(1)


def test_json_logs_stay_whole_records(emulator, tmp_path):
    # "x" first: the 100th byte then falls inside a 3-byte character.
    key = "x" + hostile(10000)
    assert key.encode()[100] & 0xC0 == 0x80
    pod = hostile(10000).replace("\n", "-")
    with Provider(emulator, tmp_path) as p:
        details = unknown_key_mount(p, key)
        # A Mount that succeeds, logged with a 10 KB pod name: over any line limit.
        p.mount_raw(attributes("team-l", "app", pod_name=pod, params={"scopes": SCOPE}),
                    timeout=30 * SLOW)
        p.mount_raw(attributes("team-l", "app", pod_name="pod-2", params={"scopes": SCOPE}),
                    timeout=30 * SLOW)
    # The status details are valid UTF-8 (grpcio would otherwise replace or
    # reinterpret the bytes) and quote a prefix of the key, cut between characters.
    shown = quoted_key(details)
    assert "\ufffd" not in details and "\u00e2" not in details, details[:200]
    assert 0 < len(shown.encode()) <= 100 and key.startswith(shown), shown

    records = json_records(p)
    refused = [r for r in records if r["msg"].startswith("mount failed: unknown parameter")]
    assert len(refused) == 1
    assert key.startswith(quoted_key(refused[0]["msg"]))
    mounts = [r for r in records if r["msg"] == "mount" and r.get("namespace") == "team-l"]
    assert len(mounts) == 2, [r["msg"][:80] for r in records]
    long_pod = mounts[0]["pod"]
    # Cut, marked, and still followed by the fields after it.
    assert long_pod.endswith("...") and pod.startswith(long_pod[:-3]), long_pod[-20:]
    assert mounts[0]["result"] == "ok" and mounts[0]["app"] == "app"
    assert mounts[1]["pod"] == "pod-2"
    assert not any(r.get("msg") == "forged" for r in records)


def test_text_logs_escape_control_characters(emulator, tmp_path):
    forged = "x\n2099-01-01T00:00:00.000Z error forged line\rmore\x1b[31m"
    with Provider(emulator, tmp_path, args=["--log-format", "text"]) as p:
        details = unknown_key_mount(p, forged)
        assert quoted_key(details) == forged
    with open(p.log_path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")[:-1]
    for line in lines:
        assert TEXT_LINE.match(line), "a line that is not a record of its own: %r" % line
        assert "\r" not in line and "\x1b" not in line, repr(line)
    refused = [line for line in lines if "unknown parameter" in line]
    assert len(refused) == 1
    assert '"x\\n2099-01-01T00:00:00.000Z error forged line\\rmore\\x1b[31m"' in refused[0]


@pytest.mark.parametrize("change,needle,has_app", [
    ({"scope": "a:b"}, "unknown parameter", True),
    ({"scopes": "NOT A SCOPE"}, "is not a scope", True),
    ({"filePermission": "0999"}, "filePermission", True),
    ({"filePermission": "0777"}, "filePermission", True),
    ({"csi.storage.k8s.io/serviceAccount.name": None}, "podInfoOnMount", False),
    ({"csi.storage.k8s.io/serviceAccount.name": "a..b"}, "not a Kubernetes name", True),
])
def test_refused_requests_are_logged_with_their_identity(emulator, tmp_path, change, needle,
                                                         has_app):
    secret_token = '{"api":{"token":"eyJhbGciOiJSUzI1NiJ9.s3cr3t-token.sig"}}'
    attrs = json.loads(attributes("team-id", "payments", pod_name="payments-7d9",
                                  params={"scopes": SCOPE}))
    attrs[TOKENS_ATTR] = secret_token
    for k, v in change.items():
        if v is None:
            del attrs[k]
        else:
            attrs[k] = v
    with Provider(emulator, tmp_path) as p:
        with pytest.raises(grpc.RpcError) as e:
            p.mount_raw(json.dumps(attrs), secrets='{"password": "hunter2-s3cr3t"}',
                        timeout=20 * SLOW)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in e.value.details()
    records = json_records(p)
    [refused] = [r for r in records if r["msg"].startswith("mount failed")]
    assert needle in refused["msg"]
    assert refused["namespace"] == "team-id" and refused["pod"] == "payments-7d9"
    if has_app:
        assert refused["app"] == change.get("csi.storage.k8s.io/serviceAccount.name",
                                            "payments")
    else:
        assert "app" not in refused
    with open(p.log_path, "rb") as f:
        raw = f.read()
    assert b"s3cr3t" not in raw and b"eyJhbGci" not in raw
