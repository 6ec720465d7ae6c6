"""A catalogue of bad input, each through the real binary over its socket:
malformed and oversized fields, missing and forged identity, path tricks in
provider write mode, invalid and too many scopes, garbage on the socket and
callers that hang up mid-call. After each: a clear error, nothing changed at
DigDir, nothing written outside the kubelet directory, the provider alive."""

import json
import os
import random
import socket

import grpc
import pytest

from provider_harness import MOUNT, Provider, attributes, files_of, provider_pb2

SCOPE = "skatteetaten:testapi"
ARGS = ["--request-timeout", "2s", "--mount-timeout", "10s", "--max-message", "131072"]
WRITES = ("POST /api/v1/clients", "PUT /api/v1/clients/{id}", "POST /api/v1/clients/{id}/jwks",
          "DELETE /api/v1/clients/{id}")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def writes(emu):
    c = emu.counts()
    return {k: c.get(k, 0) for k in WRITES}


@pytest.fixture
def provider(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=ARGS).start()
    yield p
    assert p.proc.poll() is None, "the provider died"
    p.stop()


@pytest.fixture
def unchanged(emulator, provider):
    """Asserts, after the test, that DigDir saw no write and the provider still
    answers a good Mount."""
    before = writes(emulator)
    yield
    assert writes(emulator) == before
    assert provider.version().version == "v1alpha1"


def identity(ns="team-b", sa="app", **extra):
    a = {"csi.storage.k8s.io/pod.namespace": ns, "csi.storage.k8s.io/serviceAccount.name": sa,
         "csi.storage.k8s.io/pod.name": "pod-1", "scopes": SCOPE}
    a.update(extra)
    return a


def rejected(provider, attrs, code=INVALID, needle="", **kw):
    if not isinstance(attrs, str):
        attrs = json.dumps(attrs)
    with pytest.raises(grpc.RpcError) as e:
        provider.mount_raw(attrs, timeout=10, **kw)
    assert e.value.code() == code, (e.value.code(), e.value.details())
    assert needle in e.value.details(), e.value.details()
    return e.value.details()


def raw_mount(provider, payload, timeout=10):
    call = provider.channel().unary_unary(MOUNT, request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
    return call(payload, timeout=timeout)


def pb_field(num, data):
    """One length-delimited protobuf field (tag, varint length, bytes)."""
    out, n = bytearray([num << 3 | 2]), len(data)
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


# -- attributes, secrets, permission


@pytest.mark.parametrize("attrs,needle", [
    ("", "attributes"),
    ("not json", "not a JSON object"),
    ("[]", "not a JSON object"),
    ('"a string"', "not a JSON object"),
    ("{\"csi.storage.k8s.io/pod.namespace\": ", "not a JSON object"),
    (json.dumps(identity(scopes=["a:b"])), "not a string"),
    (json.dumps(identity(filePermission=420)), "not a string"),
    (json.dumps(identity(**{"csi.storage.k8s.io/pod.namespace": None})), "not a string"),
    ('{"csi.storage.k8s.io/pod.namespace": "a", "csi.storage.k8s.io/pod.namespace": "b", '
     '"csi.storage.k8s.io/serviceAccount.name": "app"}', "not a JSON object"),
    (json.dumps(identity(ns="Team_B")), "not a Kubernetes name"),
    (json.dumps(identity(sa="app/../other")), "not a Kubernetes name"),
    (json.dumps(identity(ns="a" * 64)), "not a Kubernetes name"),
    (json.dumps(identity(filePermission="0999")), "filePermission"),
    (json.dumps(identity(filePermission="-1")), "filePermission"),
])
def test_malformed_attributes(provider, unchanged, attrs, needle):
    rejected(provider, attrs, needle=needle)


def test_attributes_of_invalid_utf8_bytes(provider, unchanged):
    bad = b'{"csi.storage.k8s.io/pod.namespace": "\xff\xfe", ' \
          b'"csi.storage.k8s.io/serviceAccount.name": "app"}'
    with pytest.raises(grpc.RpcError) as e:
        raw_mount(provider, pb_field(1, bad) + pb_field(4, b"420"))
    assert e.value.code() == INVALID


def test_a_request_that_is_not_protobuf(provider, unchanged):
    for payload in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", os.urandom(512)):
        with pytest.raises(grpc.RpcError) as e:
            raw_mount(provider, payload)
        assert e.value.code() == INVALID, e.value.details()


def test_attributes_over_max_message_are_resource_exhausted(provider, unchanged):
    big = identity(scopes=SCOPE + " " + " ".join("x:%d" % i for i in range(30000)))
    assert len(json.dumps(big)) > 131072
    rejected(provider, big, code=grpc.StatusCode.RESOURCE_EXHAUSTED, needle="larger than")


def test_attributes_over_256_kib_are_invalid(emulator, tmp_path):
    with Provider(emulator, tmp_path, name="big", args=["--max-message", "1048576"]) as p:
        before = writes(emulator)
        big = identity(secretProviderClass="x" * (300 * 1024))
        rejected(p, big, needle="larger than 262144")
        assert writes(emulator) == before
        # Just under the limit is still a request like any other.
        files = files_of(p.mount("team-b", "app", scopes=SCOPE,
                                 params={"secretProviderClass": "x" * (200 * 1024)}))
        assert files["MASKINPORTEN_SCOPES"] == SCOPE


@pytest.mark.parametrize("secrets", ["{", "[1, 2]", "42", '"a string"', '{"a": 1, "a": 2}',
                                     "nul" * 1000])
def test_malformed_secrets(provider, unchanged, secrets):
    details = rejected(provider, identity(), needle="secrets", secrets=secrets)
    assert secrets not in details or len(secrets) < 2


@pytest.mark.parametrize("secrets", ["", "null", "{}", '{"k": "v"}'])
def test_secrets_that_mean_none_or_are_ignored(provider, secrets):
    assert files_of(provider.mount_raw(json.dumps(identity()), secrets=secrets))


@pytest.mark.parametrize("permission", ["abc", "0x1a4", "1000", "99999999999999999999", "4.2",
                                        " 420", "-420", "420\n"])
def test_malformed_permission(provider, unchanged, permission):
    rejected(provider, identity(), needle="permission", permission=permission)


def test_missing_pod_attributes(provider, unchanged):
    a = identity()
    del a["csi.storage.k8s.io/pod.namespace"]
    rejected(provider, a, needle="podInfoOnMount")
    a = identity()
    del a["csi.storage.k8s.io/serviceAccount.name"]
    rejected(provider, a, needle="podInfoOnMount")
    rejected(provider, identity(ns=""), needle="podInfoOnMount")
    rejected(provider, {"secretProviderClass": "mp"}, needle="podInfoOnMount")


# -- forged identity


@pytest.mark.parametrize("param", ["namespace", "serviceAccount", "serviceAccountName", "app",
                                   "clientId", "client_id", "description", "cluster",
                                   "csi.storage.k8s.io/pod.Namespace",
                                   "csi.storage.k8s.io/serviceaccount.name"])
def test_identity_lookalike_parameters_are_unknown(provider, unchanged, param):
    rejected(provider, identity(**{param: "victim"}), needle='unknown parameter "%s"' % param)


def test_description_comes_from_the_kubelet_keys(emulator, provider):
    """volumeAttributes that name the identity keys are overridden by the kubelet's
    values (the driver merges them last): the client is the pod's own."""
    forged = {"csi.storage.k8s.io/pod.namespace": "victim-ns",
              "csi.storage.k8s.io/serviceAccount.name": "victim-app"}
    files = files_of(provider.mount_raw(attributes("team-b", "app", params=dict(forged,
                                                                                scopes=SCOPE))))
    descriptions = {c["description"] for c in emulator.clients()}
    assert descriptions == {"dev:team-b:app"}
    [c] = emulator.clients()
    assert files["MASKINPORTEN_CLIENT_ID"] == c["client_id"]


# -- scopes


@pytest.mark.parametrize("scopes", ["bad scope!", "noprefix", ":x", "x:", "a:" + "b" * 300,
                                    "a:b\tc:d!", "a:b c:d?"])
def test_invalid_scopes(provider, unchanged, scopes):
    rejected(provider, identity(scopes=scopes), needle="scope")


@pytest.mark.parametrize("scopes", ["a:b:", "A:B", "nav:test//api", "nav:test/api\u202e"])
def test_scopes_outside_digdirs_syntax_are_refused_before_any_call(emulator, provider, unchanged,
                                                                   scopes):
    # Empty parts, capitals and other characters are refused by the provider itself, and
    # a scope with a control or direction character is not repeated back.
    details = rejected(provider, identity(scopes=scopes), needle="not a scope")
    assert "\u202e" not in details
    assert emulator.counts().get("GET /api/v1/scopes/access/all", 0) == 0


def test_nul_in_attributes(provider, unchanged):
    rejected(provider, json.dumps(identity(scopes="nav:test/api\x00other:x")),
             needle="not a JSON object")


def test_more_than_64_scopes(provider, unchanged):
    many = " ".join("nav:test/api%d" % i for i in range(65))
    rejected(provider, identity(scopes=many), needle="64")


def test_64_scopes_is_the_limit_not_an_error(emulator, provider):
    # 64 distinct well-formed scopes parse; DigDir access checking is what refuses them.
    many = " ".join("nav:test/api%d" % i for i in range(64))
    before = writes(emulator)
    rejected(provider, identity(scopes=many), code=grpc.StatusCode.FAILED_PRECONDITION,
             needle="889640782")
    assert writes(emulator) == before


# -- target_path tricks in provider write mode


@pytest.fixture
def writer(emulator, tmp_path):
    kubelet = tmp_path / "kubelet"
    (kubelet / "pods").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "MASKINPORTEN_CLIENT_ID").write_text("untouched")
    (outside / "mount").mkdir()
    p = Provider(emulator, tmp_path, name="w",
                 args=ARGS + ["--write-mode", "provider", "--kubelet-dir", str(kubelet)]).start()
    snapshot = sorted(os.listdir(outside))
    yield p, kubelet, outside
    assert p.proc.poll() is None
    p.stop()
    assert sorted(os.listdir(outside)) == snapshot
    assert (outside / "MASKINPORTEN_CLIENT_ID").read_text() == "untouched"
    assert not os.path.exists(str(tmp_path / "MASKINPORTEN_CLIENT_ID"))


def volume(kubelet, uid):
    t = kubelet / "pods" / uid / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
    t.mkdir(parents=True)
    return t


def test_target_outside_the_kubelet_dir(writer):
    p, kubelet, outside = writer
    with pytest.raises(grpc.RpcError) as e:
        p.mount("team-b", "app", scopes=SCOPE, target_path=str(outside))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not under" in e.value.details()


def test_dotdot_out_of_the_kubelet_dir(writer):
    p, kubelet, outside = writer
    tricky = str(kubelet / "pods" / ".." / ".." / "outside")
    with pytest.raises(grpc.RpcError) as e:
        p.mount("team-b", "app", scopes=SCOPE, target_path=tricky)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_symlink_inside_the_kubelet_dir_pointing_outside(writer):
    p, kubelet, outside = writer
    os.symlink(str(outside), str(kubelet / "pods" / "evil"))
    for target in (kubelet / "pods" / "evil", kubelet / "pods" / "evil" / "."):
        with pytest.raises(grpc.RpcError) as e:
            p.mount("team-b", "app", scopes=SCOPE, target_path=str(target))
        assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, INVALID), \
            e.value.details()
    # A symlinked parent directory whose real place is outside.
    with pytest.raises(grpc.RpcError) as e:
        p.mount("team-b", "app", scopes=SCOPE, target_path=str(kubelet / "pods" / "evil" /
                                                                  "mount"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert os.listdir(str(outside / "mount")) == []


def test_symlinks_planted_inside_the_target(writer):
    p, kubelet, outside = writer
    t = volume(kubelet, "uid-planted")
    os.symlink(str(outside / "MASKINPORTEN_CLIENT_ID"), str(t / "MASKINPORTEN_CLIENT_ID"))
    os.symlink(str(outside), str(t / "..data"))
    os.symlink(str(outside), str(t / "..data_tmp"))
    p.mount("team-b", "app", scopes=SCOPE, target_path=str(t))
    # The planted links were replaced, never written through.
    assert os.readlink(str(t / "MASKINPORTEN_CLIENT_ID")) == "..data/MASKINPORTEN_CLIENT_ID"
    assert not os.readlink(str(t / "..data")).startswith("/")
    assert len((t / "MASKINPORTEN_CLIENT_ID").read_text()) == 36


def test_relative_target_paths(writer):
    p, kubelet, outside = writer
    t = volume(kubelet, "uid-rel")
    for rel in (os.path.relpath(str(outside)), os.path.relpath(str(t)), "pods/uid-rel",
                "mount"):
        with pytest.raises(grpc.RpcError) as e:
            p.mount("team-b", "app", scopes=SCOPE, target_path=rel)
        assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, INVALID), \
            (rel, e.value.details())
    assert os.listdir(str(t)) == []


def test_target_that_is_a_file_or_missing(writer):
    p, kubelet, outside = writer
    f = kubelet / "pods" / "file"
    f.write_text("x")
    for target in (f, kubelet / "pods" / "missing", kubelet, ""):
        with pytest.raises(grpc.RpcError) as e:
            p.mount("team-b", "app", scopes=SCOPE, target_path=str(target))
        assert e.value.code() in (grpc.StatusCode.PERMISSION_DENIED, INVALID), \
            e.value.details()
    assert f.read_text() == "x"
    assert not (kubelet / "..data").exists()


# -- the socket itself


def test_garbage_bytes_on_the_socket(emulator, provider):
    rnd = random.Random(3)
    for payload in (bytes(rnd.getrandbits(8) for _ in range(4096)), b"\x00" * 100,
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rnd.getrandbits(8)
                                                          for _ in range(2048)),
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(provider.socket)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except (socket.timeout, ConnectionError):
                pass
        finally:
            s.close()
    assert provider.proc.poll() is None
    files = files_of(provider.mount("team-b", "app", scopes=SCOPE))
    assert files["MASKINPORTEN_SCOPES"] == SCOPE


def test_a_caller_that_hangs_up_mid_call(emulator, provider):
    emulator.fault(path="^/api/v1/", delay=1.0)
    with pytest.raises(grpc.RpcError) as e:
        provider.mount("team-b", "app", scopes=SCOPE, timeout=0.2)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Many callers hang up at once while DigDir is slow.
    futures = []
    call = provider.channel().unary_unary(
        MOUNT, request_serializer=provider_pb2.MountRequest.SerializeToString,
        response_deserializer=provider_pb2.MountResponse.FromString)
    for i in range(10):
        req = provider_pb2.MountRequest(attributes=attributes("team-b", "app%d" % i,
                                                              params={"scopes": SCOPE}),
                                        secrets="null", permission="420", target_path="/tmp/x")
        futures.append(call.future(req, timeout=0.3))
    for f in futures[:5]:
        f.cancel()
    for f in futures:
        with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
            f.result()
    emulator.clear_faults()
    assert provider.proc.poll() is None
    files = files_of(provider.mount("team-b", "app", scopes=SCOPE, timeout=20))
    assert files["MASKINPORTEN_SCOPES"] == SCOPE
    assert len([c for c in emulator.clients() if c["description"] == "dev:team-b:app"]) == 1
