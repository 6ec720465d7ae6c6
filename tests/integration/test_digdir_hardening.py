"""Hardening towards DigDir and Maskinporten (issue 16, items 1, 3, 7 and 10), through
the real `serve` binary: a client is never handed to two apps, the admin grant goes
only to the issuer's own origin, clients a create race left behind are cleaned up,
the metadata is fetched again, and the work one Mount makes is bounded."""

import json
import os
import re
import time

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant, new_key, public_jwk
from provider_harness import SLOW, Provider, files_of

SCOPE = "skatteetaten:testapi"
WELL_KNOWN = "^/.well-known/oauth-authorization-server$"


def client_id(files):
    return files["MASKINPORTEN_CLIENT_ID"]


def token(emu, files, scope=SCOPE):
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, client_id(files), scope))


def redescribe(emu, cid, description):
    """Changes a client's description at DigDir, as an operator migrating clients does."""
    c = emu.digdir("GET", "/clients/" + cid).json()
    body = {k: v for k, v in c.items()
            if k not in ("client_id", "client_orgno", "created", "last_updated", "active")}
    body["description"] = description
    r = emu.digdir("PUT", "/clients/" + cid, body)
    assert r.status == 200, r


def rpc_error(call):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value


# -- item 1: one client, one app


def test_a_redescribed_client_is_not_shared_by_two_apps(emulator, tmp_path):
    """The client of app1 is described as app2 at DigDir: app2 gets it, and app1 (which
    had pinned it) lets it go and gets a client of its own, on the same node at once."""
    with Provider(emulator, tmp_path) as p:
        one = files_of(p.mount("ns", "app1", scopes=SCOPE))
        redescribe(emulator, client_id(one), "dev:ns:app2")
        two = files_of(p.mount("ns", "app2", scopes=SCOPE))
        assert client_id(two) == client_id(one)
        again = files_of(p.mount("ns", "app1", scopes=SCOPE))
        assert client_id(again) != client_id(two)
        assert "no longer belongs" in p.logs() or "forgets it" in p.logs()
    assert token(emulator, again).status == 200
    assert token(emulator, two).status == 200
    ids = {c["description"]: c["client_id"] for c in emulator.clients()}
    assert ids == {"dev:ns:app1": client_id(again), "dev:ns:app2": client_id(two)}


def test_a_pin_from_before_a_restart_is_checked(emulator, tmp_path):
    """After a restart the state file pins app1 to its old client, which now names
    app2: the pin is dropped and app1 gets its own client."""
    with Provider(emulator, tmp_path) as p:
        one = files_of(p.mount("ns", "app1", scopes=SCOPE))
    redescribe(emulator, client_id(one), "dev:ns:app2")
    with Provider(emulator, tmp_path, seed_file=p.seed_file) as p2:
        again = files_of(p2.mount("ns", "app1", scopes=SCOPE))
        assert "no longer belongs to this app" in p2.logs()
    assert client_id(again) != client_id(one)
    assert token(emulator, again).status == 200


# -- item 3: the admin grant goes only to the issuer's origin


@pytest.mark.parametrize("field", ["token_endpoint", "jwks_uri"])
def test_metadata_endpoints_off_the_issuers_origin_are_refused(emulator, tmp_path, field):
    doc = emulator.request("GET", "/.well-known/oauth-authorization-server").json()
    doc[field] = "https://attacker.invalid:8443/" + field
    emulator.fault(method="GET", path=WELL_KNOWN, status=200, body=doc)
    with Provider(emulator, tmp_path) as p:
        e = rpc_error(lambda: p.mount("ns", "app", scopes=SCOPE))
    assert "must be URLs on the issuer's origin" in e.details(), e.details()
    # No grant was sent anywhere: not even to the real token endpoint.
    assert emulator.counts().get("token:admin", 0) == 0


def test_the_operator_may_trust_other_endpoints(emulator, tmp_path):
    doc = emulator.request("GET", "/.well-known/oauth-authorization-server").json()
    doc["jwks_uri"] = "https://keys.invalid/jwk"
    emulator.fault(method="GET", path=WELL_KNOWN, status=200, body=doc)
    with Provider(emulator, tmp_path, args=["--trust-metadata-endpoints"]) as p:
        files = files_of(p.mount("ns", "app", scopes=SCOPE))
    assert files["MASKINPORTEN_JWKS_URI"] == "https://keys.invalid/jwk"


# -- item 7: no leftover active clients


def keyless(emu, description):
    """A keyless duplicate, made after the first (DigDir's times only grow), as a node
    stopped between its create and its delete leaves one."""
    return emu.add_client(description=description, scopes=[SCOPE])["client_id"]


def test_a_duplicate_left_by_a_create_race_is_deactivated(emulator, tmp_path):
    first = emulator.add_client(description="dev:ns:app", scopes=[SCOPE])["client_id"]
    loser = keyless(emulator, "dev:ns:app")
    with Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0"]) as p:
        files = files_of(p.mount("ns", "app", scopes=SCOPE))
        metrics = metrics_of(p)
        assert "deactivated client %s" % loser in p.logs()
    assert client_id(files) == first
    assert [c["client_id"] for c in emulator.clients() if c["description"] == "dev:ns:app"] \
        == [first]
    assert re.search(r'mpcsi_clients_deactivated_total\{reason="duplicate"\} 1\b', metrics)


def test_a_duplicate_with_foreign_keys_is_left_alone(emulator, tmp_path):
    first = emulator.add_client(description="dev:ns:app", scopes=[SCOPE])["client_id"]
    other = emulator.add_client(description="dev:ns:app", scopes=[SCOPE],
                                jwks=[public_jwk(new_key())])["client_id"]
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "app", scopes=SCOPE))
        assert "keys that are not this provider's" in p.logs()
    assert client_id(files) == first
    assert other in [c["client_id"] for c in emulator.clients()]


def test_a_node_killed_mid_create_settles_after_its_restart(emulator, tmp_path):
    """The state file says a create of the app was under way when the node died, and
    DigDir holds two clients for it: after the restart the provider settles the app
    without waiting for a Mount, deactivating the keyless loser."""
    first = emulator.add_client(description="dev:ns:gone", scopes=[SCOPE])["client_id"]
    loser = keyless(emulator, "dev:ns:gone")
    p = Provider(emulator, tmp_path)
    with open(os.path.join(p.dir, "maskinporten.state"), "w") as f:
        json.dump({"version": 1, "cluster": "dev",
                   "apps": {"dev:ns:gone": {"pending": True}}}, f)
    with p:
        deadline = time.monotonic() + 20 * SLOW
        while loser in [c["client_id"] for c in emulator.clients()]:
            assert time.monotonic() < deadline, p.logs()[-2000:]
            time.sleep(0.2)
    assert [c["client_id"] for c in emulator.clients() if c["description"] == "dev:ns:gone"] \
        == [first]
    with open(os.path.join(p.dir, "maskinporten.state")) as f:
        app = json.load(f)["apps"]["dev:ns:gone"]
    assert app["pending"] is False and app["client_id"] == first


def test_a_created_client_the_listing_does_not_show_yet_is_used(emulator, tmp_path):
    """DigDir created the client, but the confirming listing does not show it (yet):
    the provider uses the client it created instead of failing and creating another
    at the next try."""
    with Provider(emulator, tmp_path) as p:
        emulator.fault(method="GET", path=r"^/api/v1/clients$", status=200, body=[], count=2)
        files = files_of(p.mount("ns", "app", scopes=SCOPE))
        assert files_of(p.mount("ns", "app", scopes=SCOPE)) == files
    assert emulator.counts().get("POST /api/v1/clients") == 1
    assert [c["client_id"] for c in emulator.clients()] == [client_id(files)]
    assert token(emulator, files).status == 200


def test_a_mount_that_gives_up_after_the_create_leaves_no_keyless_client(emulator, tmp_path):
    """The Mount's deadline passes after the create, while the keys are being
    registered: the flight goes on and registers them, with no further Mount."""
    timeout = 3 * SLOW  # long enough for the create, however slow the machine
    with Provider(emulator, tmp_path) as p:
        emulator.fault(method="POST", path="/jwks$", delay=timeout + 1, count=1)
        with pytest.raises(grpc.RpcError):
            p.mount("ns", "app", scopes=SCOPE, timeout=timeout)
        [c] = emulator.clients()
        deadline = time.monotonic() + 30 * SLOW
        while len(emulator.client(c["client_id"])["keys"]) < 2:
            assert time.monotonic() < deadline, p.logs()[-2000:]
            time.sleep(0.2)


def metrics_of(p):
    m = re.search(r"metrics on \S+ \(port (\d+)\)", p.logs())
    assert m, p.logs()
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % m.group(1), timeout=5) as r:
        return r.read().decode()


# -- item 10: the metadata is fetched again; one Mount's work is bounded


def test_metadata_is_fetched_again(emulator, tmp_path):
    with Provider(emulator, tmp_path, args=["--metadata-refresh", "1s"]) as p:
        files_of(p.mount("ns", "a1", scopes=SCOPE))
        before = emulator.counts().get("GET /.well-known/oauth-authorization-server", 0)
        time.sleep(1.2)
        files_of(p.mount("ns", "a2", scopes=SCOPE))
    assert emulator.counts().get("GET /.well-known/oauth-authorization-server", 0) > before


def test_metadata_is_fetched_again_when_the_token_endpoint_fails(emulator, tmp_path):
    emulator.settings(admin_token_lifetime=1)
    with Provider(emulator, tmp_path) as p:
        files_of(p.mount("ns", "a1", scopes=SCOPE))
        before = emulator.counts().get("GET /.well-known/oauth-authorization-server", 0)
        time.sleep(1.1)
        emulator.fault(method="POST", path="^/token$", status=404, count=1)
        with pytest.raises(grpc.RpcError):
            p.mount("ns", "a2", scopes=SCOPE)
        files_of(p.mount("ns", "a2", scopes=SCOPE))
    assert emulator.counts().get("GET /.well-known/oauth-authorization-server", 0) > before


def test_the_work_of_one_mount_is_bounded(emulator, tmp_path):
    """A declaration that needs 256 consumer grants: each Mount makes at most 128 writes
    at DigDir and says the rest follow; the kubelet's next tries finish the job."""
    orgs = [o for o in (str(n) for n in range(910000000, 910020000)) if valid(o)][:256]
    decl = [{"name": "s%d" % i, "product": "bank", "enabled": True,
             "consumers": [{"orgno": o} for o in orgs[i * 8:(i + 1) * 8]]} for i in range(32)]
    params = {"exposes": json.dumps(decl)}
    with Provider(emulator, tmp_path) as p:
        e = rpc_error(lambda: p.mount("ns", "api", scopes=SCOPE, params=params))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        assert "the rest follow" in e.details()
        writes = sum(v for k, v in emulator.counts().items()
                     if k.startswith(("POST /api/v1/scopes", "PUT /api/v1/scopes")))
        assert writes == 128
        for _ in range(4):
            try:
                files = files_of(p.mount("ns", "api", scopes=SCOPE, params=params))
                break
            except grpc.RpcError as again:
                assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, again
    assert len(files["MASKINPORTEN_EXPOSED_SCOPES"].split()) == 32
    granted = [a for a in emulator.control("GET", "/scopes")["access"]
               if a["state"] == "APPROVED" and a["owner_orgno"] == emulator.info["org_number"]]
    assert len(granted) == 256


def test_a_declaration_over_the_consumer_bound_is_refused(emulator, tmp_path):
    orgs = [o for o in (str(n) for n in range(910000000, 910020000)) if valid(o)][:257]
    decl = [{"name": "s%d" % i, "product": "bank", "enabled": True,
             "consumers": [{"orgno": o} for o in orgs[i * 9:(i + 1) * 9]]} for i in range(29)]
    with Provider(emulator, tmp_path) as p:
        e = rpc_error(lambda: p.mount("ns", "api", scopes=SCOPE,
                                      params={"exposes": json.dumps(decl)}))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "257 consumers in all" in e.details(), e.details()


def valid(orgno):
    w = (3, 2, 7, 6, 5, 4, 3, 2)
    rest = 11 - sum(int(d) * k for d, k in zip(orgno[:8], w)) % 11
    check = 0 if rest == 11 else rest
    return check != 10 and check == int(orgno[8])
