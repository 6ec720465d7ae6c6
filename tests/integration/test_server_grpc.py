"""The gRPC server and the `mount` subcommand from the outside.

- `serve` over its socket with grpcio, as the CSI driver calls it: Version, garbage bytes
  on the socket, clients that vanish mid-call, SIGTERM.
- `mount` (our driver-side client and atomic writer) against a fake provider written
  here in Python with grpcio, so the request it sends is checked byte for byte against
  what driver v1.6 sends, and against the real `serve` end to end.
"""

import concurrent.futures
import json
import os
import signal
import socket
import stat
import subprocess
import time

import grpc
import pytest

from provider_harness import MOUNT, SLOW, VERSION, Provider, cli, provider_pb2

SCOPE = "skatteetaten:testapi"


@pytest.fixture
def provider(emulator, tmp_path):
    p = Provider(emulator, tmp_path).start()
    yield p
    p.stop()


def raw_call(sock_path, method, payload, timeout=10):
    """One unary call with raw bytes in and out (no serializers)."""
    with grpc.insecure_channel("unix:" + sock_path,
                               options=[("grpc.default_authority", "localhost")]) as ch:
        return ch.unary_unary(method)(payload, timeout=timeout)


# -- serve ------------------------------------------------------------------------------

def test_version_over_a_generic_channel(provider):
    out = raw_call(provider.socket, VERSION,
                   provider_pb2.VersionRequest(version="v1alpha1").SerializeToString())
    v = provider_pb2.VersionResponse.FromString(out)
    assert v.version == "v1alpha1"
    assert v.runtime_name == "maskinporten-csi-provider"
    mode = stat.S_IMODE(os.lstat(provider.socket).st_mode)
    assert mode == 0o600


def test_unknown_method_is_unimplemented(provider):
    with pytest.raises(grpc.RpcError) as e:
        raw_call(provider.socket, "/v1alpha1.CSIDriverProvider/Unmount", b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_garbage_on_the_socket_does_not_kill_the_server(provider):
    junk = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\xff" * 64,
        b"",
    ]
    for data in junk:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        s.connect(provider.socket)
        try:
            if data:
                s.sendall(data)
            s.recv(1024)
        except (socket.timeout, ConnectionError):
            pass
        finally:
            s.close()
    # A request that is not a MountRequest at all: an answer, not a crash.
    with pytest.raises(grpc.RpcError) as e:
        raw_call(provider.socket, MOUNT, b"\xff\xff\xff\xff garbage")
    assert e.value.code() != grpc.StatusCode.UNAVAILABLE
    assert provider.proc.poll() is None
    assert provider.version().version == "v1alpha1"


def test_clients_that_disconnect_mid_call_do_not_kill_the_server(emulator, provider):
    # DigDir answers slowly, so each cold Mount is still running when its client goes away.
    emulator.fault(path="^/api/v1/", delay=0.5)
    for i in range(5):
        ch = grpc.insecure_channel("unix:" + provider.socket,
                                   options=[("grpc.default_authority", "localhost")])
        call = ch.unary_unary(MOUNT, request_serializer=provider_pb2.MountRequest.SerializeToString,
                              response_deserializer=provider_pb2.MountResponse.FromString)
        from provider_harness import attributes
        fut = call.future(provider_pb2.MountRequest(
            attributes=attributes("team-gone", "app-%d" % i, params={"scopes": SCOPE}),
            secrets="null", permission="420", target_path="/tmp/unused"), timeout=30)
        time.sleep(0.15)
        assert not fut.done()
        fut.cancel()
        ch.close()
    emulator.clear_faults()
    time.sleep(1.5)  # let the abandoned Mounts finish and their answers fail to send
    assert provider.proc.poll() is None
    assert provider.version().version == "v1alpha1"
    resp = provider.mount("team-gone", "app-0", scopes=SCOPE)
    assert len(resp.files) > 0


def test_sigterm_exits_zero_and_removes_the_socket(provider):
    assert os.path.exists(provider.socket)
    assert provider.stop(signal.SIGTERM) == 0
    assert not os.path.exists(provider.socket)


def test_sigterm_lets_a_running_mount_finish(emulator, tmp_path):
    # A grace that outlasts the Mount however slow the machine (or valgrind) is.
    provider = Provider(emulator, tmp_path, args=["--shutdown-grace", "%ds" % (30 * SLOW)])
    emulator.fault(path="^/api/v1/", delay=0.3)
    with provider, concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(provider.mount, "team-term", "app", scopes=SCOPE)
        time.sleep(0.2 * SLOW)  # the Mount has arrived; its DigDir calls take 1.5 s or more
        provider.proc.send_signal(signal.SIGTERM)
        resp = fut.result(timeout=30 * SLOW)
        assert len(resp.files) > 0
        assert provider.proc.wait(30 * SLOW) == 0
    assert not os.path.exists(provider.socket)


# -- mount against a fake provider ------------------------------------------------------

class FakeProvider:
    """A provider written here with grpcio: records requests, answers as told."""

    def __init__(self, path):
        self.path = path
        self.requests = []
        self.answer = None  # MountResponse, or (StatusCode, message)
        handler = grpc.method_handlers_generic_handler("v1alpha1.CSIDriverProvider", {
            "Mount": grpc.unary_unary_rpc_method_handler(
                self.mount, request_deserializer=provider_pb2.MountRequest.FromString,
                response_serializer=provider_pb2.MountResponse.SerializeToString),
        })
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port("unix:" + path)

    def mount(self, req, ctx):
        self.requests.append((req, dict(ctx.invocation_metadata()), ctx.time_remaining()))
        if isinstance(self.answer, tuple):
            ctx.abort(*self.answer)
        return self.answer

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(None)


def run_mount(sock, target, *extra):
    return subprocess.run(cli("mount", "--socket", sock, "--namespace", "team-a",
                              "--service-account", "payments", "--dir", target, *extra),
                          capture_output=True, text=True, timeout=60 * SLOW)


def answer(files):
    resp = provider_pb2.MountResponse()
    for path, mode, contents in files:
        resp.files.add(path=path, mode=mode, contents=contents)
        resp.object_version.add(id="file/" + path, version="v1")
    return resp


def test_mount_sends_what_the_driver_sends_and_writes_atomically(tmp_path):
    sock = str(tmp_path / "fake.sock")
    target = tmp_path / "mnt"
    secret = b'{"d":"PRIVATE-KEY-MATERIAL"}'
    with FakeProvider(sock) as fake:
        fake.answer = answer([("MASKINPORTEN_CLIENT_JWK", 0o600, secret),
                              ("MASKINPORTEN_CLIENT_ID", 0o644, b"abc-123")])
        r = run_mount(sock, target, "--pod-name", "p1", "--pod-uid", "u-1", "--scopes", "a:b c:d",
                      "--file-permission", "0640", "--params", '{"exposes2":"x","scopes":"old"}')
    assert r.returncode == 0, r.stderr
    req, md, remaining = fake.requests[0]
    # json.Marshal of a Go map: compact, keys sorted.
    expected = {"csi.storage.k8s.io/ephemeral": "false", "csi.storage.k8s.io/pod.name": "p1",
                "csi.storage.k8s.io/pod.namespace": "team-a", "csi.storage.k8s.io/pod.uid": "u-1",
                "csi.storage.k8s.io/serviceAccount.name": "payments", "exposes2": "x",
                "filePermission": "0640", "scopes": "a:b c:d",
                "secretProviderClass": "maskinporten-cli"}
    assert req.attributes == json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert req.secrets == "null"
    assert req.permission == "420"
    assert req.target_path == str(target)
    assert md.get(":authority", "localhost") == "localhost"
    # The driver's 120 s; gRPC rounds its grpc-timeout header up to three significant
    # figures, so a deadline a millisecond over 120 s arrives as 121 s.
    assert 100 < remaining <= 121

    assert b"PRIVATE-KEY-MATERIAL" not in (r.stdout + r.stderr).encode()
    assert "wrote MASKINPORTEN_CLIENT_JWK (mode 0600, %d bytes)" % len(secret) in r.stdout
    assert "object file/MASKINPORTEN_CLIENT_ID version v1" in r.stdout
    assert (target / "MASKINPORTEN_CLIENT_JWK").read_bytes() == secret
    assert os.readlink(target / "MASKINPORTEN_CLIENT_JWK") == "..data/MASKINPORTEN_CLIENT_JWK"
    assert stat.S_IMODE(os.stat(target / "MASKINPORTEN_CLIENT_JWK").st_mode) == 0o600
    assert os.readlink(target / "..data").startswith("..")


def test_mount_defaults_pod_name_and_a_fresh_uid(tmp_path):
    sock = str(tmp_path / "fake.sock")
    with FakeProvider(sock) as fake:
        fake.answer = answer([("F", 0o644, b"x")])
        assert run_mount(sock, tmp_path / "m1").returncode == 0
        assert run_mount(sock, tmp_path / "m2").returncode == 0
    a1 = json.loads(fake.requests[0][0].attributes)
    a2 = json.loads(fake.requests[1][0].attributes)
    assert a1["csi.storage.k8s.io/pod.name"] == "payments-cli"
    assert len(a1["csi.storage.k8s.io/pod.uid"]) == 36
    assert a1["csi.storage.k8s.io/pod.uid"] != a2["csi.storage.k8s.io/pod.uid"]
    assert "scopes" not in a1


def test_mount_reports_the_status_and_exits_1(tmp_path):
    sock = str(tmp_path / "fake.sock")
    with FakeProvider(sock) as fake:
        fake.answer = (grpc.StatusCode.PERMISSION_DENIED, "use a dedicated service account")
        r = run_mount(sock, tmp_path / "m")
        assert r.returncode == 1
        assert "PERMISSION_DENIED: use a dedicated service account" in r.stderr
        assert not os.path.exists(tmp_path / "m" / "..data")

        # No object versions: the driver fails such a mount, so do we.
        fake.answer = provider_pb2.MountResponse(files=[provider_pb2.File(path="a", mode=420)])
        r = run_mount(sock, tmp_path / "m")
        assert r.returncode == 1
        assert "missing object versions" in r.stderr

        # A path the driver would refuse: nothing written.
        fake.answer = answer([("../escape", 0o644, b"x")])
        r = run_mount(sock, tmp_path / "m")
        assert r.returncode == 1
        assert os.listdir(tmp_path / "m") == []
        assert not os.path.exists(tmp_path / "escape")

        # No files: the provider wrote them itself.
        fake.answer = provider_pb2.MountResponse(
            object_version=[provider_pb2.ObjectVersion(id="x", version="1")])
        r = run_mount(sock, tmp_path / "m")
        assert r.returncode == 0
        assert "provider write mode" in r.stdout


def test_mount_usage_errors_exit_2(tmp_path):
    r = subprocess.run(cli("mount", "--socket", tmp_path / "s"), capture_output=True,
                       text=True, timeout=10 * SLOW)
    assert r.returncode == 2
    assert "--namespace" in r.stderr
    r = run_mount(str(tmp_path / "s"), tmp_path / "m", "--params", '["not", "an object"]')
    assert r.returncode == 2


def test_mount_against_serve_end_to_end(provider, tmp_path):
    target = tmp_path / "pod"
    r = run_mount(provider.socket, target, "--scopes", SCOPE)
    assert r.returncode == 0, r.stderr + provider.logs()
    assert "wrote MASKINPORTEN_CLIENT_JWK" in r.stdout
    jwk = json.loads((target / "MASKINPORTEN_CLIENT_JWK").read_text())
    assert jwk["d"] not in r.stdout + r.stderr
    assert (target / "MASKINPORTEN_SCOPES").read_text().strip() == SCOPE
    # The same answer again: the writer leaves the directory alone.
    before = os.readlink(target / "..data")
    r = run_mount(provider.socket, target, "--scopes", SCOPE, "--pod-uid", "again")
    assert r.returncode == 0, r.stderr
    assert os.readlink(target / "..data") == before
