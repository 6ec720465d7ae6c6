"""Mount end to end: the real `serve` binary driven over its socket as the driver
drives it, against the emulator. Each test would fail if the feature broke."""

import concurrent.futures
import json
import os
import stat
import time

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant, decode_jwt, new_key, public_jwk
from provider_harness import SLOW, WRAPPER, Provider, files_of, modes_of, versions_of, write_seed

SCOPE = "skatteetaten:testapi"
NO_ACCESS = "folkeregister:deling/offentligutenhjemmel"
EXPECTED_FILES = {"MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_CLIENT_JWK", "MASKINPORTEN_SCOPES",
                  "MASKINPORTEN_WELL_KNOWN_URL", "MASKINPORTEN_ISSUER", "MASKINPORTEN_JWKS_URI",
                  "MASKINPORTEN_TOKEN_ENDPOINT", "maskinporten.env"}
WRITES = ("POST /api/v1/clients", "PUT /api/v1/clients/{id}", "POST /api/v1/clients/{id}/jwks",
          "DELETE /api/v1/clients/{id}")


@pytest.fixture
def provider(emulator, tmp_path):
    p = Provider(emulator, tmp_path).start()
    yield p
    p.stop()


def active(emu, description):
    return [c for c in emu.clients() if c["description"] == description and c.get("active", True)]


def get_token(emu, files, scope=SCOPE):
    """Uses the mounted JWK as an app would, checked by the emulator (an independent
    implementation): returns the token endpoint's answer."""
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, files["MASKINPORTEN_CLIENT_ID"], scope))


def writes(counts):
    return {k: v for k, v in counts.items() if k in WRITES and v}


def test_version(provider):
    v = provider.version()
    assert v.version == "v1alpha1"
    assert v.runtime_name == "maskinporten-csi-provider"
    assert v.runtime_version.count(".") == 2


def test_first_mount_provisions_and_the_key_gets_a_token(emulator, provider):
    resp = provider.mount("team-a", "payments", scopes=SCOPE)
    files = files_of(resp)
    assert set(files) == EXPECTED_FILES
    assert set(modes_of(resp).values()) == {0o644}
    assert set(versions_of(resp)) == EXPECTED_FILES

    [client] = active(emulator, "dev:team-a:payments")
    assert files["MASKINPORTEN_CLIENT_ID"] == client["client_id"]
    assert client["scopes"] == [SCOPE]
    assert files["MASKINPORTEN_SCOPES"] == SCOPE
    assert files["MASKINPORTEN_ISSUER"] == emulator.issuer
    assert files["MASKINPORTEN_WELL_KNOWN_URL"] == emulator.info["well_known_url"]
    assert files["MASKINPORTEN_TOKEN_ENDPOINT"] == emulator.info["token_endpoint"]
    assert files["MASKINPORTEN_JWKS_URI"] == emulator.info["jwks_uri"]

    jwk_fields = json.loads(files["MASKINPORTEN_CLIENT_JWK"])
    assert list(jwk_fields) == ["use", "kty", "kid", "alg", "n", "e", "d", "p", "q", "dp", "dq",
                                "qi"]
    kids = [k["kid"] for k in emulator.client(client["client_id"])["keys"]]
    assert jwk_fields["kid"] in kids and len(kids) == 2
    assert versions_of(resp)["MASKINPORTEN_CLIENT_JWK"] == jwk_fields["kid"]

    r = get_token(emulator, files)
    assert r.status == 200, r
    claims = decode_jwt(r.json()["access_token"])[1]
    assert claims["client_id"] == client["client_id"] and claims["scope"] == SCOPE

    env = files["maskinporten.env"]
    assert "MASKINPORTEN_CLIENT_ID='%s'\n" % client["client_id"] in env
    # Nothing secret in the provider's log, at debug level.
    logs = provider.logs()
    for field in ("d", "p", "q", "dp", "dq", "qi"):
        assert jwk_fields[field] not in logs
    assert '"result":"ok"' in logs


def test_warm_mounts_make_no_requests_and_return_the_same_key(emulator, provider):
    first = files_of(provider.mount("team-a", "payments", scopes=SCOPE))
    before = emulator.counts()
    for _ in range(5):
        again = files_of(provider.mount("team-a", "payments", scopes=SCOPE))
        assert again == first
    assert emulator.counts() == before


def test_another_node_with_the_same_seed_gets_the_same_client_and_key(emulator, tmp_path,
                                                                     provider):
    first = files_of(provider.mount("team-a", "payments", scopes=SCOPE))
    with Provider(emulator, tmp_path, name="node2", seed_file=provider.seed_file) as other:
        before = emulator.counts()
        second = files_of(other.mount("team-a", "payments", scopes=SCOPE, pod_name="pod-2"))
        assert writes(emulator.counts()) == writes(before)
    assert second["MASKINPORTEN_CLIENT_ID"] == first["MASKINPORTEN_CLIENT_ID"]
    assert second["MASKINPORTEN_CLIENT_JWK"] == first["MASKINPORTEN_CLIENT_JWK"]
    assert len(active(emulator, "dev:team-a:payments")) == 1


def test_client_survives_restart_and_is_reused(emulator, tmp_path, provider):
    first = files_of(provider.mount("team-a", "payments", scopes=SCOPE))
    assert provider.stop() == 0
    assert not os.path.exists(provider.socket)
    p2 = Provider(emulator, tmp_path, name="p", seed_file=provider.seed_file).start()
    try:
        second = files_of(p2.mount("team-a", "payments", scopes=SCOPE))
    finally:
        p2.stop()
    assert second["MASKINPORTEN_CLIENT_ID"] == first["MASKINPORTEN_CLIENT_ID"]
    assert emulator.counts().get("POST /api/v1/clients", 0) == 1


def test_scope_without_access_names_scope_and_organisation(emulator, provider):
    with pytest.raises(grpc.RpcError) as e:
        provider.mount("team-a", "payments", scopes="%s %s" % (SCOPE, NO_ACCESS))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert NO_ACCESS in e.value.details() and "889640782" in e.value.details()
    assert SCOPE not in e.value.details().split("scope(s)")[-1].split(":")[0]
    assert emulator.clients() == []
    assert writes(emulator.counts()) == {}


def test_adopts_a_client_made_by_hand(emulator, provider):
    made = emulator.add_client(description="dev:team-b:ledger", scopes=[SCOPE],
                               integration_type="maskinporten", client_name="by hand")
    before = emulator.counts()
    files = files_of(provider.mount("team-b", "ledger", scopes=SCOPE))
    assert files["MASKINPORTEN_CLIENT_ID"] == made["client_id"]
    assert emulator.counts().get("POST /api/v1/clients", 0) == \
        before.get("POST /api/v1/clients", 0)
    assert get_token(emulator, files).status == 200


def test_adoption_keeps_foreign_keys_while_there_is_room(emulator, provider):
    old = new_key("legacy-1")
    made = emulator.add_client(description="dev:team-b:ledger", scopes=[SCOPE],
                               integration_type="maskinporten", jwks=[public_jwk(old)])
    provider.mount("team-b", "ledger", scopes=SCOPE)
    kids = [k["kid"] for k in emulator.client(made["client_id"])["keys"]]
    assert "legacy-1" in kids and len(kids) == 3
    # The old setup's pods keep working during the migration.
    r = emulator.token(client_grant(emulator, old, made["client_id"], SCOPE))
    assert r.status == 200, r


def test_scope_change_updates_the_client(emulator, provider):
    provider.mount("team-a", "payments", scopes=SCOPE)
    files = files_of(provider.mount("team-a", "payments", scopes=SCOPE + " nav:test/api"))
    [client] = active(emulator, "dev:team-a:payments")
    assert sorted(client["scopes"]) == sorted([SCOPE, "nav:test/api"])
    assert emulator.counts().get("PUT /api/v1/clients/{id}") == 1
    assert get_token(emulator, files, scope="nav:test/api").status == 200


def test_concurrent_cold_mounts_share_one_flight(emulator, provider):
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(
            lambda i: files_of(provider.mount("team-c", "burst", scopes=SCOPE,
                                              pod_name="burst-%d" % i)), range(12)))
    assert len({r["MASKINPORTEN_CLIENT_ID"] for r in results}) == 1
    assert len({r["MASKINPORTEN_CLIENT_JWK"] for r in results}) == 1
    counts = emulator.counts()
    assert counts.get("POST /api/v1/clients") == 1
    assert counts.get("POST /api/v1/clients/{id}/jwks") == 1


def test_no_scopes_registers_the_default_scope(emulator, tmp_path):
    with Provider(emulator, tmp_path, name="d", args=["--default-scope", "nav:test/api"]) as p:
        files = files_of(p.mount("team-a", "noscopes", params={"filePermission": "0640"}))
        assert files["MASKINPORTEN_SCOPES"] == ""
        [client] = active(emulator, "dev:team-a:noscopes")
        assert client["scopes"] == ["nav:test/api"]


def test_file_permission_parameter_sets_every_mode(provider):
    resp = provider.mount("team-a", "payments", scopes=SCOPE, params={"filePermission": "0440"})
    assert set(modes_of(resp).values()) == {0o440}
    resp = provider.mount("team-a", "payments", scopes=SCOPE, permission="384")
    assert set(modes_of(resp).values()) == {0o600}


def fnv1a64(data):
    """The object version of non-secret content: 64-bit FNV-1a as 16 hex digits (src/mount.c)."""
    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) & 0xffffffffffffffff
    return "%016x" % h


def test_provider_write_mode_writes_the_kubelet_layout(emulator, tmp_path):
    kubelet = tmp_path / "kubelet"
    target = kubelet / "pods" / "uid-1" / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
    target.mkdir(parents=True)
    with Provider(emulator, tmp_path, name="w",
                  args=["--write-mode", "provider", "--kubelet-dir", str(kubelet)]) as p:
        resp = p.mount("team-a", "payments", scopes=SCOPE, target_path=str(target))
        assert len(resp.files) == 0 and len(resp.object_version) == len(EXPECTED_FILES)
        assert os.path.islink(target / "..data")
        for name in EXPECTED_FILES:
            assert os.readlink(target / name) == "..data/" + name
            assert stat.S_IMODE(os.stat(target / name).st_mode) == 0o644
        written = {n: (target / n).read_text() for n in EXPECTED_FILES}
        assert get_token(emulator, written).status == 200
        # The versions answered are those of the files written: the key's is its kid, the env
        # file's a hash of the versions before it, the others' a hash of their contents.
        versions = [(v.id, v.version) for v in resp.object_version]
        mix = b""
        for name, version in versions:
            if name == "MASKINPORTEN_CLIENT_JWK":
                assert version == json.loads(written[name])["kid"]
            elif name == "maskinporten.env":
                assert version == fnv1a64(mix)
            else:
                assert version == fnv1a64(written[name].encode())
            mix += version.encode() + b"|"

        outside = tmp_path / "elsewhere"
        outside.mkdir()
        with pytest.raises(grpc.RpcError) as e:
            p.mount("team-a", "payments", scopes=SCOPE, target_path=str(outside))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "is not under" in e.value.details()
        assert os.listdir(outside) == []


def test_epoch_boundary_hands_out_the_next_key_which_already_works(emulator, tmp_path):
    length = 3600
    now = int(time.time())
    boundary = (now // length + 1) * length
    seed = write_seed(str(tmp_path / "seed"))
    common = ["--epoch-length", str(length)]
    with Provider(emulator, tmp_path, name="before", seed_file=seed,
                  args=common + ["--time-offset", str(boundary - 5 - now)]) as p:
        before = files_of(p.mount("team-a", "payments", scopes=SCOPE))
    with Provider(emulator, tmp_path, name="after", seed_file=seed,
                  args=common + ["--time-offset", str(boundary + 5 - now)]) as p:
        after = files_of(p.mount("team-a", "payments", scopes=SCOPE))
    kid_before = json.loads(before["MASKINPORTEN_CLIENT_JWK"])["kid"]
    kid_after = json.loads(after["MASKINPORTEN_CLIENT_JWK"])["kid"]
    assert kid_before != kid_after
    assert int(kid_after.split(".")[2]) == int(kid_before.split(".")[2]) + 1
    # Both keys work at once: no failed token request across the boundary.
    assert get_token(emulator, before).status == 200
    assert get_token(emulator, after).status == 200


@pytest.mark.parametrize("attrs,code,needle", [
    ("", grpc.StatusCode.INVALID_ARGUMENT, "attributes"),
    ("{not json", grpc.StatusCode.INVALID_ARGUMENT, "not a JSON object"),
    (json.dumps({"csi.storage.k8s.io/pod.name": "x"}), grpc.StatusCode.INVALID_ARGUMENT,
     "podInfoOnMount"),
    (json.dumps({"csi.storage.k8s.io/pod.namespace": "a",
                 "csi.storage.k8s.io/serviceAccount.name": "default"}),
     grpc.StatusCode.PERMISSION_DENIED, "dedicated"),
    (json.dumps({"csi.storage.k8s.io/pod.namespace": "a",
                 "csi.storage.k8s.io/serviceAccount.name": "app", "scope": SCOPE}),
     grpc.StatusCode.INVALID_ARGUMENT, 'unknown parameter "scope"'),
    (json.dumps({"csi.storage.k8s.io/pod.namespace": "a",
                 "csi.storage.k8s.io/serviceAccount.name": "app", "scopes": "bad scope!"}),
     grpc.StatusCode.INVALID_ARGUMENT, "not a scope"),
    (json.dumps({"csi.storage.k8s.io/pod.namespace": "a",
                 "csi.storage.k8s.io/serviceAccount.name": "app", "filePermission": "9"}),
     grpc.StatusCode.INVALID_ARGUMENT, "filePermission"),
])
def test_bad_requests_get_clear_errors_and_change_nothing(emulator, provider, attrs, code,
                                                          needle):
    with pytest.raises(grpc.RpcError) as e:
        provider.mount_raw(attrs)
    assert e.value.code() == code
    assert needle in e.value.details()
    assert emulator.counts().get("POST /api/v1/clients", 0) == 0
    assert emulator.clients() == []


@pytest.mark.parametrize("secrets,permission,needle", [
    ("{\"a\": ", "420", "secrets"),
    ("null", "0644", "permission"),
    ("null", "-1", "permission"),
])
def test_bad_secrets_and_permission(emulator, provider, secrets, permission, needle):
    with pytest.raises(grpc.RpcError) as e:
        provider.mount("team-a", "payments", scopes=SCOPE, secrets=secrets,
                       permission=permission)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in e.value.details()
    assert emulator.clients() == []


def test_secrets_and_tokens_never_reach_logs_or_errors(emulator, provider):
    secret = "s3cr3t-value-that-must-not-leak"
    token = "eyJhbGciOiJSUzI1NiJ9.tokenpayload-%s.sig" % secret[:6]
    provider.mount("team-a", "payments", scopes=SCOPE,
                   secrets=json.dumps({"key": secret}),
                   params={"csi.storage.k8s.io/serviceAccount.tokens":
                           json.dumps({"": {"token": token}})})
    with pytest.raises(grpc.RpcError) as e:
        provider.mount("team-a", "default", secrets=json.dumps({"key": secret}))
    assert secret not in e.value.details()
    logs = provider.logs()
    assert secret not in logs and token not in logs


def test_digdir_down_fails_cold_mounts_but_serves_known_clients(emulator, provider):
    known = files_of(provider.mount("team-a", "payments", scopes=SCOPE))
    emulator.fault(path="^/api/v1/.*", status=503)
    emulator.fault(path="^/token$", status=503)
    assert files_of(provider.mount("team-a", "payments", scopes=SCOPE)) == known
    t0 = time.time()
    with pytest.raises(grpc.RpcError) as e:
        provider.mount("team-a", "newapp", scopes=SCOPE, timeout=60)
    assert time.time() - t0 < 60
    assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "dev:team-a:newapp" in e.value.details()
    emulator.clear_faults()
    files = files_of(provider.mount("team-a", "newapp", scopes=SCOPE))
    assert len(active(emulator, "dev:team-a:newapp")) == 1
    assert get_token(emulator, files).status == 200


def threads_of(proc):
    with open("/proc/%d/status" % proc.pid) as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def test_burst_of_new_apps_shares_listings_and_tokens(emulator, provider):
    idle_threads = threads_of(provider.proc)
    # The first listing takes a second, as a large organisation's does: the burst's
    # Mounts, which a busy machine delivers over a few hundred milliseconds, all
    # reach the provider while it runs and share it.
    emulator.fault(method="GET", path=r"^/api/v1/clients$", delay=1.0, count=1)
    jobs = [("app%02d" % (i % 20), i) for i in range(100)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(
            lambda j: files_of(provider.mount("burst", j[0], scopes=SCOPE,
                                              pod_name="%s-%d" % j)), jobs))
    per_app = {}
    for (app, _), files in zip(jobs, results):
        per_app.setdefault(app, set()).add(files["MASKINPORTEN_CLIENT_ID"])
    assert all(len(ids) == 1 for ids in per_app.values()) and len(per_app) == 20
    counts = emulator.counts()
    assert counts.get("POST /api/v1/clients") == 20
    assert counts.get("POST /api/v1/clients/{id}/jwks") == 20
    # A client just created has no keys to read, and the upload's answer shows them.
    assert counts.get("GET /api/v1/clients/{id}/jwks", 0) == 0
    assert counts.get("token:admin") == 1
    # Unshared, each new app costs a lookup and a confirming listing: 40. Workers start
    # as Mounts queue, so all 20 flights run at once: one listing finds that none of the
    # apps has a client, and one, sent once every flight that read it has decided and
    # all 20 creates are answered, confirms them.
    # Under valgrind, which runs one thread at a time, flights start seconds apart and a
    # lookup may find the last listing too old to share: there the bound is the unshared one.
    print("client listings for 20 new apps: %d" % counts.get("GET /api/v1/clients"))
    assert counts.get("GET /api/v1/clients") <= (40 if WRAPPER else 2)
    # The idle provider ran one worker; the burst started more, one per waiting Mount.
    assert threads_of(provider.proc) >= idle_threads + 19


def burst(provider, prefix, apps):
    """Cold Mounts for `apps` new apps at once, two pods each; their client ids."""
    jobs = [("%s%02d" % (prefix, i % apps), i) for i in range(2 * apps)]
    with concurrent.futures.ThreadPoolExecutor(2 * apps) as pool:
        return list(pool.map(lambda j: files_of(provider.mount(
            "burst", j[0], scopes=SCOPE, pod_name="%s-%d" % j))["MASKINPORTEN_CLIENT_ID"], jobs))


def workers_of(proc):
    """Threads named mp-worker: the provider's worker pool."""
    task = "/proc/%d/task" % proc.pid
    names = []
    for t in os.listdir(task):
        try:
            with open(os.path.join(task, t, "comm")) as f:
                names.append(f.read().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread left between the listing and the read (ESRCH)
    return names.count("mp-worker")


def wait_workers(proc, want, seconds):
    deadline = time.time() + seconds * SLOW
    while workers_of(proc) > want and time.time() < deadline:
        time.sleep(0.1)
    return workers_of(proc)


def test_workers_beyond_one_leave_when_idle_and_come_back(emulator, tmp_path):
    # Under valgrind a worker may wait seconds between Mounts of one burst.
    idle = "%dms" % (1000 * SLOW)
    p = Provider(emulator, tmp_path, args=["--worker-idle", idle]).start()
    try:
        assert workers_of(p.proc) == 1
        assert len(set(burst(p, "first", 12))) == 12
        assert workers_of(p.proc) >= 12
        # Soon after the burst every worker but one has left and been joined.
        assert wait_workers(p.proc, 1, 15) == 1
        # Their slots take new workers: the next burst grows the pool again.
        assert len(set(burst(p, "second", 12))) == 12
        assert workers_of(p.proc) >= 12
        assert wait_workers(p.proc, 1, 15) == 1
        assert emulator.counts().get("POST /api/v1/clients") == 24
    finally:
        p.stop()


def test_workers_stay_with_worker_idle_zero(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--worker-idle", "0"]).start()
    try:
        burst(p, "stay", 8)
        grown = workers_of(p.proc)
        assert grown >= 8
        time.sleep(1.5 * SLOW)
        assert workers_of(p.proc) == grown
    finally:
        p.stop()
