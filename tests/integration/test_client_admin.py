"""Client administration through the real binary against the emulator:
`client list|show` with exposed scopes and keys, `client delete` without and
with --permanent, and `client adopt` taking over a client another tool
registered, keeping and then dropping its two keys."""

import json
import subprocess

import pytest

from harness import client_grant, new_key, public_jwk
from provider_harness import SLOW, Provider, cli, files_of, upstream_args
from jwcrypto import jwk

APP = "dev:team-a:payments"
OTHER_ORG = "974761076"
EXPOSES = json.dumps([{"name": "payments.read", "product": "bank", "enabled": True,
                       "consumers": [{"orgno": OTHER_ORG}]}])
SCOPE = "test:bank:payments.read"


@pytest.fixture
def provider(emulator, tmp_path):
    p = Provider(emulator, tmp_path).start()
    yield p
    p.stop()


def client(provider, *args):
    """`client ...` with the same configuration as the provider's `serve`."""
    return subprocess.run(cli("client", *args) +
                          upstream_args(provider.emu, provider.seed_file, provider.cluster),
                          capture_output=True, text=True, timeout=60 * SLOW)


def mount_app(provider):
    return files_of(provider.mount("team-a", "payments", scopes="nav:test/api",
                                   params={"exposes": EXPOSES}))


def scope(emu, name):
    return next(s for s in emu.control("GET", "/scopes")["scopes"] if s["name"] == name)


def writes(emu):
    return {k: v for k, v in emu.counts().items()
            if k.split()[0] in ("POST", "PUT", "DELETE") and "/api/v1/" in k and "token" not in k}


def test_list_and_show(emulator, provider):
    files = mount_app(provider)
    cid = files["MASKINPORTEN_CLIENT_ID"]
    kid = json.loads(files["MASKINPORTEN_CLIENT_JWK"])["kid"]

    p = client(provider, "list")
    assert p.returncode == 0, p.stderr
    line = next(l for l in p.stdout.splitlines() if cid in l)
    assert APP in line and "nav:test/api" in line

    for which in (APP, cid):
        p = client(provider, "show", which)
        assert p.returncode == 0, p.stderr
        out = p.stdout
        assert "client_id:         " + cid in out
        assert "description:       " + APP in out
        assert "scopes:            nav:test/api" in out
        assert "keys:              2" in out
        assert kid in out and "ours, epoch" in out and "exp 20" in out
        assert "exposed scopes:    1" in out
        assert "%s  active  consumers: %s (APPROVED)" % (SCOPE, OTHER_ORG) in out
        assert "\"d\":" not in out and "\"p\":" not in out

    p = client(provider, "show", APP, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["client"]["client_id"] == cid
    assert doc["exposed_scopes"] == [{"name": SCOPE, "active": True, "description": "bank - " + APP,
                                      "consumers": [{"orgno": OTHER_ORG, "state": "APPROVED"}]}]
    assert all(set(k) <= {"kid", "kty", "alg", "use", "own", "epoch", "exp"} for k in doc["keys"])
    assert sorted(k["epoch"] - min(x["epoch"] for x in doc["keys"]) for k in doc["keys"]) == [0, 1]


def test_show_lists_only_the_apps_own_scopes(emulator, provider):
    mount_app(provider)
    emulator.seed_scope("test:other:thing", emulator.info["org_number"],
                        description="other - dev:team-b:ledger")
    p = client(provider, "show", APP)
    assert p.returncode == 0, p.stderr
    assert "exposed scopes:    1" in p.stdout and "test:other:thing" not in p.stdout


def test_delete_without_permanent_changes_nothing(emulator, provider):
    cid = mount_app(provider)["MASKINPORTEN_CLIENT_ID"]
    before = writes(emulator)
    p = client(provider, "delete", APP)
    assert p.returncode != 0
    assert "would deactivate client " + cid in p.stderr
    assert SCOPE in p.stderr and "consumers lose access" in p.stderr
    assert "Nothing was changed" in p.stderr and "--permanent" in p.stderr
    assert writes(emulator) == before
    assert emulator.client(cid)["active"] is True
    assert scope(emulator, SCOPE)["active"] is True


def test_delete_permanent_deactivates_scopes_and_client(emulator, provider):
    cid = mount_app(provider)["MASKINPORTEN_CLIENT_ID"]
    p = client(provider, "delete", APP, "--permanent")
    assert p.returncode == 0, p.stderr
    assert "deactivated exposed scope " + SCOPE in p.stdout
    assert "deleted client " + cid in p.stdout
    assert scope(emulator, SCOPE)["active"] is False
    assert emulator.client(cid)["active"] is False


def token_status(emu, key, cid, scope="nav:test/api"):
    return emu.token(client_grant(emu, key, cid, scope)).status


def test_migration_keeps_then_drops_foreign_keys(emulator, provider):
    k1, k2 = new_key("legacy-1"), new_key("legacy-2")
    made = emulator.add_client(description="dev:team-a:legacy", scopes=["nav:test/api"],
                               jwks=[public_jwk(k1), public_jwk(k2)])
    cid = made["client_id"]

    # The first Mount adopts the client (same client_id) and keeps the old tool's keys.
    files = files_of(provider.mount("team-a", "legacy", scopes="nav:test/api"))
    assert files["MASKINPORTEN_CLIENT_ID"] == cid
    ours = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    kids = {k["kid"] for k in emulator.client(cid)["keys"]}
    assert {"legacy-1", "legacy-2"} <= kids and len(kids) == 4
    assert token_status(emulator, k1, cid) == 200
    assert token_status(emulator, k2, cid) == 200
    assert token_status(emulator, ours, cid) == 200

    # Without the flag: reports the foreign keys and what the flag would do; they stay.
    p = client(provider, "adopt", "dev:team-a:legacy")
    assert p.returncode == 0, p.stderr
    assert "kept foreign key legacy-1" in p.stdout and "kept foreign key legacy-2" in p.stdout
    assert "--drop-foreign-keys" in p.stdout
    assert {k["kid"] for k in emulator.client(cid)["keys"]} == kids

    p = client(provider, "adopt", "dev:team-a:legacy", "--drop-foreign-keys")
    assert p.returncode == 0, p.stderr
    assert "dropped foreign key legacy-1" in p.stdout
    assert "dropped foreign key legacy-2" in p.stdout
    left = {k["kid"] for k in emulator.client(cid)["keys"]}
    assert left == kids - {"legacy-1", "legacy-2"} and ours["kid"] in left
    assert token_status(emulator, k1, cid) != 200
    assert token_status(emulator, k2, cid) != 200
    assert token_status(emulator, ours, cid) == 200

    # Once only ours remain, running it again changes nothing.
    before = writes(emulator)
    p = client(provider, "adopt", "dev:team-a:legacy", "--drop-foreign-keys")
    assert p.returncode == 0, p.stderr
    assert "no foreign keys" in p.stdout
    assert writes(emulator) == before


def test_adopt_needs_an_existing_client(emulator, provider):
    p = client(provider, "adopt", "dev:team-a:nobody")
    assert p.returncode != 0
    assert "no active client" in p.stderr
    p = client(provider, "adopt", "not-a-description")
    assert p.returncode != 0 and "CLUSTER:NAMESPACE:APP" in p.stderr
