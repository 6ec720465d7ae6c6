"""Exposed scopes (SecretProviderClass parameter `exposes`) through the real
`serve` binary against the emulator: creation with the registration body
docs/digdir-api.md gives for `POST /scopes`, consumer grants, zero writes
when nothing changed, deactivation and reactivation, ownership, validation,
and the MASKINPORTEN_EXPOSED_SCOPES file."""

import json

import grpc
import pytest

from provider_harness import Provider, files_of

APP = "dev:team-a:payments"
OTHER_ORG = "974761076"
THIRD_ORG = "983887457"
SCOPE_WRITES = ("POST /api/v1/scopes", "PUT /api/v1/scopes", "DELETE /api/v1/scopes",
                "PUT /api/v1/scopes/access/{orgno}", "DELETE /api/v1/scopes/access/{orgno}")
SCOPE_CALLS = SCOPE_WRITES + ("GET /api/v1/scopes", "GET /api/v1/scopes/access")


@pytest.fixture
def provider(emulator, tmp_path):
    p = Provider(emulator, tmp_path).start()
    yield p
    p.stop()


def exposes(*entries):
    return json.dumps(list(entries))


def entry(**kw):
    e = {"name": "payments.read", "product": "bank", "enabled": True,
         "consumers": [{"orgno": OTHER_ORG, "name": "Skatt"}]}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def mount(p, decl, sa="payments", **kw):
    return p.mount("team-a", sa, scopes="nav:test/api", params={"exposes": decl}, **kw)


def state(emu):
    return emu.control("GET", "/scopes")


def scope(emu, name):
    return next((s for s in state(emu)["scopes"] if s["name"] == name), None)


def access(emu, name):
    return {a["consumer_orgno"]: a["state"] for a in state(emu)["access"] if a["scope"] == name}


def delta(before, after, keys):
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if after.get(k, 0) != before.get(k, 0)}


def test_create_registers_the_scope_and_grants_consumers(emulator, provider):
    before = emulator.counts()
    resp = mount(provider, exposes(entry(atMaxAge=60, visibility="private")))
    files = files_of(resp)
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"

    s = scope(emulator, "test:bank:payments.read")
    assert s is not None
    assert s["prefix"] == "test" and s["subscope"] == "bank:payments.read"
    assert s["description"] == "bank - " + APP
    assert s["active"] is True
    assert s["at_max_age"] == 60
    assert s["visibility"] == "PRIVATE"
    assert s["allowed_integration_types"] == ["maskinporten"]
    assert s["accessible_for_all"] is False
    assert s["token_type"] == "SELF_CONTAINED"
    assert access(emulator, "test:bank:payments.read") == {OTHER_ORG: "APPROVED"}
    d = delta(before, emulator.counts(), SCOPE_WRITES)
    assert d == {"POST /api/v1/scopes": 1, "PUT /api/v1/scopes/access/{orgno}": 1}


def test_registration_body_is_the_references(emulator, provider):
    # Fields read back from the emulator's log of the request are what we sent.
    mount(provider, exposes(entry(name="a/b", product="prod", consumers=None,
                                  allowedIntegrations=["maskinporten", "api_klient"],
                                  accessibleForAll=True, delegationSource="altinn",
                                  separator="/")))
    s = scope(emulator, "test:prod/a/b")
    assert s is not None, state(emulator)
    assert s["subscope"] == "prod/a/b"
    assert s["allowed_integration_types"] == ["maskinporten", "api_klient"]
    assert s["accessible_for_all"] is True
    assert s["delegation_source"] == "https://tt02.altinn.no/"
    assert s["visibility"] == "PUBLIC"
    assert access(emulator, "test:prod/a/b") == {}


def test_default_separator_rule(emulator, provider):
    files = files_of(mount(provider, exposes(entry(name="x/y", consumers=None),
                                             entry(name="zz.w", consumers=None),
                                             entry(name="vv", product="p2", consumers=None,
                                                   separator="."))))
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank/x/y test:bank:zz.w test:p2.vv"


def test_second_mount_makes_no_writes_and_no_calls(emulator, provider, tmp_path):
    decl = exposes(entry())
    mount(provider, decl)
    before = emulator.counts()
    files = files_of(mount(provider, decl))
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"
    assert delta(before, emulator.counts(), SCOPE_CALLS) == {}

    # A fresh provider (no cache) reads DigDir but writes nothing either.
    other = Provider(emulator, tmp_path, name="p2").start()
    try:
        before = emulator.counts()
        files = files_of(mount(other, decl))
        d = delta(before, emulator.counts(), SCOPE_CALLS)
        assert d.get("GET /api/v1/scopes") == 1
        assert not any(k in d for k in SCOPE_WRITES), d
        assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"
    finally:
        other.stop()


def test_changed_consumers_one_grant_one_revoke(emulator, provider):
    mount(provider, exposes(entry()))
    before = emulator.counts()
    mount(provider, exposes(entry(consumers=[{"orgno": THIRD_ORG}])))
    d = delta(before, emulator.counts(), SCOPE_WRITES)
    assert d == {"PUT /api/v1/scopes/access/{orgno}": 1,
                 "DELETE /api/v1/scopes/access/{orgno}": 1}
    assert access(emulator, "test:bank:payments.read") == {OTHER_ORG: "DENIED",
                                                          THIRD_ORG: "APPROVED"}


def test_changed_field_is_one_put(emulator, provider):
    mount(provider, exposes(entry()))
    before = emulator.counts()
    mount(provider, exposes(entry(atMaxAge=120)))
    assert delta(before, emulator.counts(), SCOPE_WRITES) == {"PUT /api/v1/scopes": 1}
    assert scope(emulator, "test:bank:payments.read")["at_max_age"] == 120


def test_disable_deactivates_and_enable_reactivates_with_put(emulator, provider):
    mount(provider, exposes(entry()))
    before = emulator.counts()
    files = files_of(mount(provider, exposes(entry(enabled=False))))
    assert delta(before, emulator.counts(), SCOPE_WRITES) == {"DELETE /api/v1/scopes": 1}
    assert scope(emulator, "test:bank:payments.read")["active"] is False
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == ""

    # Disabled again: nothing to do.
    before = emulator.counts()
    mount(provider, exposes(entry(enabled=False, atMaxAge=31)))
    assert delta(before, emulator.counts(), SCOPE_WRITES) == {}

    before = emulator.counts()
    files = files_of(mount(provider, exposes(entry())))
    d = delta(before, emulator.counts(), SCOPE_WRITES)
    assert d == {"PUT /api/v1/scopes": 1}, d
    assert scope(emulator, "test:bank:payments.read")["active"] is True
    assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"


def test_scope_of_another_app_is_refused_not_taken_over(emulator, provider):
    emulator.seed_scope("test:bank:payments.read", emulator.info["org_number"],
                        description="bank - dev:team-b:ledger", consumers=[THIRD_ORG])
    before = emulator.counts()
    with pytest.raises(grpc.RpcError) as e:
        mount(provider, exposes(entry()))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "bank - dev:team-b:ledger" in e.value.details()
    assert "bank:payments.read" in e.value.details()
    assert delta(before, emulator.counts(), SCOPE_WRITES) == {}
    s = scope(emulator, "test:bank:payments.read")
    assert s["description"] == "bank - dev:team-b:ledger"
    assert access(emulator, "test:bank:payments.read") == {THIRD_ORG: "APPROVED"}


@pytest.mark.parametrize("bad, field", [
    ({"name": None}, "name"),
    ({"name": "Upper"}, "name"),
    ({"name": "a//b"}, "name"),
    ({"product": "Bank"}, "product"),
    ({"product": None}, "product"),
    ({"enabled": "yes"}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"atMaxAge": -1}, "atMaxAge"),
    ({"atMaxAge": "30"}, "atMaxAge"),
    ({"allowedIntegrations": []}, "allowedIntegrations"),
    ({"allowedIntegrations": ["Maskin porten"]}, "allowedIntegrations"),
    ({"accessibleForAll": "no"}, "accessibleForAll"),
    ({"delegationSource": "other", "separator": "/"}, "delegationSource"),
    ({"delegationSource": "altinn"}, "separator"),
    ({"separator": "-"}, "separator"),
    ({"visibility": "internal"}, "visibility"),
    ({"consumers": [{"orgno": "12345678"}]}, "consumers"),
    ({"consumers": [{"orgno": "974761077"}]}, "consumers"),
    ({"consumers": [{"name": "x"}]}, "consumers"),
    ({"colour": "red"}, "colour"),
])
def test_validation_names_entry_and_field(emulator, provider, bad, field):
    e = entry(name="ok.scope")
    e.update(bad)
    e = {k: v for k, v in e.items() if v is not None}
    before = emulator.counts()
    with pytest.raises(grpc.RpcError) as exc:
        mount(provider, exposes(entry(name="first", consumers=None), e))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    msg = exc.value.details()
    assert "exposes[1]" in msg and '"%s"' % field in msg, msg
    # Nothing was provisioned for a bad declaration.
    assert delta(before, emulator.counts(), SCOPE_WRITES + ("POST /api/v1/clients",)) == {}


def test_validation_of_the_document(emulator, provider):
    for text in ("not json", '{"name": "x"}', "[1]"):
        with pytest.raises(grpc.RpcError) as exc:
            mount(provider, text)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exposes" in exc.value.details()


def test_duplicate_scope_is_refused(emulator, provider):
    with pytest.raises(grpc.RpcError) as exc:
        mount(provider, exposes(entry(), entry(consumers=None)))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exposes[0]" in exc.value.details()


def test_digdir_down_after_a_sync_keeps_serving(emulator, tmp_path):
    p = Provider(emulator, tmp_path, args=["--revalidate-interval", "1s"]).start()
    try:
        decl = exposes(entry())
        mount(p, decl)
        import time
        time.sleep(1.2)
        emulator.fault(path="/api/v1/scopes", status=503, count=100)
        files = files_of(mount(p, decl))
        assert files["MASKINPORTEN_EXPOSED_SCOPES"] == "test:bank:payments.read"
    finally:
        emulator.clear_faults()
        p.stop()


def test_concurrent_mounts_share_one_sync(emulator, provider):
    import concurrent.futures
    decl = exposes(entry())
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: files_of(mount(provider, decl)), range(6)))
    assert {r["MASKINPORTEN_EXPOSED_SCOPES"] for r in results} == {"test:bank:payments.read"}
    c = emulator.counts()
    assert c.get("POST /api/v1/scopes") == 1
    assert c.get("PUT /api/v1/scopes/access/{orgno}") == 1


def test_two_nodes_creating_at_once_end_with_one_scope(emulator, provider, tmp_path):
    import concurrent.futures
    other = Provider(emulator, tmp_path, name="p2").start()
    try:
        for p in (provider, other):
            p.mount("team-a", "payments", scopes="nav:test/api")
        # The first create is held back while the other node lists and creates: the held one
        # then loses (400 "already exists"), and that must not fail its Mount.
        emulator.fault(method="POST", path="^/api/v1/scopes$", delay=2.0, count=1)
        decl = exposes(entry())
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda p: files_of(mount(p, decl)), (provider, other)))
        assert {r["MASKINPORTEN_EXPOSED_SCOPES"] for r in results} == {"test:bank:payments.read"}
        assert emulator.counts().get("POST /api/v1/scopes") == 2
        assert access(emulator, "test:bank:payments.read") == {OTHER_ORG: "APPROVED"}
    finally:
        emulator.clear_faults()
        other.stop()
