"""The provider against DigDir and Maskinporten as the public record describes
them (issue 14): the stricter emulator's rules, driven through the real `serve`
binary. Each test names the rule it holds the provider to; docs/digdir-api.md
gives the sources."""

import json
import re
import time
import urllib.request

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant, decode_jwt, new_key, public_jwk
import subprocess

from provider_harness import SLOW, Provider, cli, files_of, upstream_args

SCOPE = "skatteetaten:testapi"
ADMIN_BASE = ["idporten:dcr.read", "idporten:dcr.write", "idporten:dcr.modify"]


def exposes(*entries):
    return {"exposes": json.dumps(list(entries))}


def entry(name="payments.read", **kw):
    e = {"name": name, "product": "bank", "enabled": True}
    e.update(kw)
    return e


def token_for(emu, files, scope=SCOPE):
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, files["MASKINPORTEN_CLIENT_ID"], scope))


def client_of(emu, description):
    found = [c for c in emu.clients() if c["description"] == description]
    assert len(found) == 1, found
    return found[0]


def rpc_error(call):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value


# -- 1. the scope prefix comes from configuration


def test_exposes_sends_the_configured_prefix(emulator, tmp_path):
    """POST /scopes carries --scope-prefix; an organisation may hold several prefixes."""
    emulator.settings(org_prefixes=["other", "team"])
    with Provider(emulator, tmp_path, args=["--scope-prefix", "team"]) as p:
        files = files_of(p.mount("ns", "api", scopes=SCOPE, params=exposes(entry())))
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "team:bank:payments.read"
    scopes = emulator.control("GET", "/scopes")["scopes"]
    [s] = [s for s in scopes if s["subscope"] == "bank:payments.read"]
    assert s["prefix"] == "team" and s["name"] == "team:bank:payments.read"


def test_exposes_without_a_prefix_is_refused_before_anything_changes(emulator, tmp_path):
    """No --scope-prefix: a Mount with `exposes` fails with FailedPrecondition, and DigDir
    sees no write at all (no client created, no scope)."""
    p = Provider(emulator, tmp_path, args=["--scope-prefix", ""]).start()
    try:
        e = rpc_error(lambda: p.mount("ns", "api", scopes=SCOPE, params=exposes(entry())))
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--scope-prefix" in e.details() and "MPCSI_SCOPE_PREFIX" in e.details()
        counts = emulator.counts()
        assert not any(k.startswith(("POST", "PUT", "DELETE")) for k in counts), counts
        # A plain Mount still works without a prefix.
        files = files_of(p.mount("ns", "plain", scopes=SCOPE))
        assert token_for(emulator, files).status == 200
    finally:
        p.stop()


# -- 2. adopted clients with legacy keys keep working


def test_adopting_a_client_with_keys_from_before_2025(emulator, tmp_path):
    """A client registered by hand with a key that has no `use` (legal before DigDir's
    2025-05-22 API) is adopted: the provider's upload carries that key normalised
    (use: sig added, only public members), so the old key keeps getting tokens and the
    upload is not refused."""
    legacy = new_key(kid="legacy-1")
    old = public_jwk(legacy)
    del old["use"]
    del old["alg"]
    c = emulator.add_client(description="dev:ns:adopted", scopes=[SCOPE], jwks=[old])
    assert "use" not in emulator.client(c["client_id"])["keys"][0]
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "adopted", scopes=SCOPE))
    assert files["MASKINPORTEN_CLIENT_ID"] == c["client_id"]
    keys = emulator.client(c["client_id"])["keys"]
    [kept] = [k for k in keys if k["kid"] == "legacy-1"]
    assert kept["use"] == "sig" and kept["alg"] == "RS256"
    assert set(kept) <= {"kty", "use", "kid", "alg", "n", "e", "exp", "x5c"}
    assert len(keys) == 3  # this epoch's key, the next one, and the adopted one
    assert token_for(emulator, files).status == 200
    r = emulator.token(client_grant(emulator, legacy, c["client_id"], SCOPE))
    assert r.status == 200, r


# -- 3. listings of any realistic size


def test_a_lookup_among_ten_thousand_clients(emulator, tmp_path):
    """An organisation of 10,000 clients (a 7 MB listing, over the old 1 MiB cap):
    a new app is looked up, created, confirmed and served."""
    emulator.bulk_clients(10000, description="prod:team-{i}:app")
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "newcomer", scopes=SCOPE, timeout=120 * SLOW))
        # A known app's republish costs nothing at DigDir.
        before = emulator.counts().get("GET /api/v1/clients", 0)
        files_of(p.mount("ns", "newcomer", scopes=SCOPE))
        assert emulator.counts().get("GET /api/v1/clients", 0) == before
    assert files["MASKINPORTEN_CLIENT_ID"] == client_of(emulator, "dev:ns:newcomer")["client_id"]
    assert token_for(emulator, files).status == 200


def test_a_listing_over_the_bound_is_a_clear_error(emulator, tmp_path):
    """--max-listing bounds a listing; over it, the Mount fails naming the bound, and
    nothing is created."""
    emulator.bulk_clients(3000, description="prod:team-{i}:app")
    with Provider(emulator, tmp_path, args=["--max-listing", "500000"]) as p:
        e = rpc_error(lambda: p.mount("ns", "app", scopes=SCOPE))
    assert "larger than 500000 bytes" in e.details(), e.details()
    assert "GET /clients" in e.details()
    assert emulator.counts().get("POST /api/v1/clients", 0) == 0


# -- 4. no pod gets a key Maskinporten does not accept yet


def test_a_new_client_is_answered_once_maskinporten_accepts_it(emulator, tmp_path):
    """With a propagation delay, the Mount of a new app answers only when a token
    request with its key works: the pod's very first token request succeeds."""
    emulator.settings(propagation_delay=4)
    with Provider(emulator, tmp_path) as p:
        t0 = time.monotonic()
        files = files_of(p.mount("ns", "fresh", scopes=SCOPE, timeout=60 * SLOW))
        waited = time.monotonic() - t0
    assert waited >= 3.5, waited
    r = token_for(emulator, files)
    assert r.status == 200, r


def test_a_mount_that_cannot_wait_gets_a_retryable_error_and_the_flight_goes_on(
        emulator, tmp_path):
    """The delay outlasts the Mount's deadline: the Mount fails with DeadlineExceeded
    saying the key is propagating; the flight goes on, and the kubelet's next try,
    once Maskinporten accepts the key, is answered at once."""
    # The Mount must reach the wait before its deadline, and the wait must outlast it,
    # however slow the machine (or valgrind) makes the steps before it.
    timeout = 5 * SLOW
    emulator.settings(propagation_delay=timeout + 7)
    with Provider(emulator, tmp_path) as p:
        e = rpc_error(lambda: p.mount("ns", "slow", scopes=SCOPE, timeout=timeout))
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        assert "not accepted by Maskinporten yet" in e.details(), e.details()
        assert "maskinporten: pod ns/" in e.details()
        creates = emulator.counts().get("POST /api/v1/clients", 0)
        # The flight finishes on its own: no new Mount is needed for it.
        deadline = time.monotonic() + 60 * SLOW
        while "Maskinporten accepts the key" not in p.logs():
            assert time.monotonic() < deadline, p.logs()[-2000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        files = files_of(p.mount("ns", "slow", scopes=SCOPE))
        assert time.monotonic() - t0 < 2 * SLOW
        assert emulator.counts().get("POST /api/v1/clients", 0) == creates == 1
    assert token_for(emulator, files).status == 200


def test_steady_rotation_never_waits(emulator, tmp_path):
    """The next epoch's key was registered a whole epoch early, so the first Mount of a
    new epoch hands it out without asking Maskinporten whether it works yet."""
    emulator.settings(propagation_delay=3)
    with Provider(emulator, tmp_path, args=["--epoch-length", "1d"]) as p:
        first = files_of(p.mount("ns", "rot", scopes=SCOPE, timeout=60 * SLOW))
    checks = emulator.counts().get("token:client", 0)
    assert checks >= 1  # the new client itself was checked
    with Provider(emulator, tmp_path, name="next-day", seed_file=p.seed_file,
                  args=["--epoch-length", "1d", "--time-offset", "86400"]) as p2:
        files = files_of(p2.mount("ns", "rot", scopes=SCOPE))
        assert "Maskinporten accepts" not in p2.logs()
    assert emulator.counts().get("token:client", 0) == checks
    assert files["MASKINPORTEN_CLIENT_ID"] == first["MASKINPORTEN_CLIENT_ID"]
    kid = json.loads(files["MASKINPORTEN_CLIENT_JWK"])["kid"]
    assert kid != json.loads(first["MASKINPORTEN_CLIENT_JWK"])["kid"]
    assert token_for(emulator, files).status == 200


# -- 5. admin scopes only as needed


def test_an_admin_client_without_scopes_write_still_provisions_clients(emulator, tmp_path):
    """Without idporten:scopes.write the admin client still provisions plain clients
    (the provider never asks for that scope unless a Mount exposes scopes); a Mount
    with `exposes` fails naming the missing scope."""
    emulator.settings(admin_scopes=ADMIN_BASE)
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "plain", scopes=SCOPE))
        e = rpc_error(lambda: p.mount("ns", "api", scopes=SCOPE, params=exposes(entry())))
    assert token_for(emulator, files).status == 200
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    assert "idporten:scopes.write" in e.details(), e.details()
    assert emulator.counts().get("POST /api/v1/scopes", 0) == 0


def test_scopes_write_is_asked_for_only_by_exposed_scope_calls(emulator, tmp_path):
    """The admin tokens the provider asks for: plain Mounts never carry scopes.write."""
    with Provider(emulator, tmp_path, args=["--log-level", "debug"]) as p:
        files_of(p.mount("ns", "plain", scopes=SCOPE))
        plain = emulator.counts().get("token:admin", 0)
        files_of(p.mount("ns", "api", scopes=SCOPE, params=exposes(entry())))
        both = emulator.counts().get("token:admin", 0)
    assert plain == 1
    assert both == 2  # one more token, with scopes.write, for the exposed scope


# -- 6. the organisation number comes from the documented claim


def test_organisation_number_from_the_consumer_claim(emulator, tmp_path):
    """Admin tokens carry only `consumer` (no client_orgno): the scope access check
    reads the organisation from consumer.ID, so a granted scope is provisioned and an
    ungranted one is refused naming the organisation."""
    assert "client_orgno" not in decode_jwt(emulator.admin_token())[1]
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "granted", scopes=SCOPE))
        e = rpc_error(lambda: p.mount(
            "ns", "refused", scopes="folkeregister:deling/offentligutenhjemmel"))
    assert token_for(emulator, files).status == 200
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert emulator.info["org_number"] in e.details()


def test_organisation_number_from_configuration(emulator, tmp_path):
    """--org-number wins over the token: another organisation's number makes the
    access check fail naming that number."""
    with Provider(emulator, tmp_path, args=["--org-number", "974761076"]) as p:
        e = rpc_error(lambda: p.mount("ns", "app", scopes="nav:test/api"))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "974761076" in e.details(), e.details()


# -- 7. one refused consumer grant does not fail the app


def test_one_refused_consumer_does_not_fail_the_mount(emulator, tmp_path):
    refused, granted = "974761076", "983887457"
    emulator.settings(refused_consumers=[refused])
    decl = entry(consumers=[{"orgno": refused}, {"orgno": granted}])
    with Provider(emulator, tmp_path, args=["--metrics-addr", "127.0.0.1:0"]) as p:
        files = files_of(p.mount("ns", "api", scopes=SCOPE, params=exposes(decl)))
        metrics = fetch_metrics(p)
        logs = p.logs()
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"
    acl = {a["consumer_orgno"]: a["state"] for a in emulator.control("GET", "/scopes")["access"]
           if a["scope"] == "test:bank:payments.read"}
    assert acl == {granted: "APPROVED"}
    assert re.search(r"mpcsi_consumer_grants_refused_total 1\b", metrics), metrics
    line = [json.loads(l) for l in logs.splitlines() if "refused to grant" in l]
    assert line and line[0]["orgno"] == refused and line[0]["level"] == "warn", logs[-2000:]
    # `client show`, run where the provider runs, reports it from the node's state file.
    show = subprocess.run(cli("client", "show", "dev:ns:api", "--json", "--socket", p.socket,
                              *upstream_args(emulator, p.seed_file)),
                          capture_output=True, text=True, timeout=60 * SLOW)
    assert show.returncode == 0, show.stderr
    [r] = json.loads(show.stdout)["refused_consumer_grants"]
    assert r["orgno"] == refused and r["scope"] == "test:bank:payments.read"
    assert "400" in r["reason"]


def fetch_metrics(p):
    m = re.search(r"metrics on \S+ \(port (\d+)\)", p.logs())
    assert m, p.logs()
    with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % m.group(1), timeout=5) as r:
        return r.read().decode()


# -- 8. adoption keeps what the provider does not manage


def test_adoption_keeps_a_hand_made_clients_settings(emulator, tmp_path):
    """Updating an adopted client is GET, change the scopes, PUT: its name, lifetimes and
    other settings survive, and the PUT carries no field DigDir refuses."""
    c = emulator.add_client(description="dev:ns:handmade", client_name="Made by hand",
                            scopes=["nav:test/api"], access_token_lifetime=1800,
                            authorization_lifetime=60, client_uri="https://example.no")
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("ns", "handmade", scopes=SCOPE))
    after = emulator.client(c["client_id"])
    assert files["MASKINPORTEN_CLIENT_ID"] == c["client_id"]
    assert after["scopes"] == [SCOPE]
    for field in ("client_name", "access_token_lifetime", "authorization_lifetime",
                  "client_uri"):
        assert after[field] == c[field], field
    assert emulator.counts().get("PUT /api/v1/clients/{id}") == 1


# -- 9. atMaxAge by DigDir's rule


@pytest.mark.parametrize("age", [0, 1, 3600, 2147483647])
def test_at_max_age_follows_digdirs_rule(emulator, tmp_path, age):
    with Provider(emulator, tmp_path) as p:
        files_of(p.mount("ns", "api", scopes=SCOPE, params=exposes(entry(atMaxAge=age))))
    [s] = [s for s in emulator.control("GET", "/scopes")["scopes"]
           if s["subscope"] == "bank:payments.read"]
    assert s["at_max_age"] == age


@pytest.mark.parametrize("age", [-1, 2147483648, 1.5, "3600"])
def test_at_max_age_outside_digdirs_rule_is_refused(emulator, tmp_path, age):
    with Provider(emulator, tmp_path) as p:
        e = rpc_error(lambda: p.mount("ns", "api", scopes=SCOPE,
                                      params=exposes(entry(atMaxAge=age))))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'field "atMaxAge"' in e.details()
    assert emulator.counts().get("POST /api/v1/clients", 0) == 0
