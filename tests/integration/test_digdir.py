"""The admin subcommands (`client ensure|list|show|delete`) through the real
binary against the emulator: what each path costs at DigDir, adoption, scope
access, races between two nodes, and faults on the wire."""

import json
import os
import subprocess
import time

import pytest

from provider_harness import SLOW, WRAPPER, cli

DESC = "dev:team:app"


@pytest.fixture
def seed_file(tmp_path):
    path = tmp_path / "seed"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(48))
    os.close(fd)
    return str(path)


def flags(emu, seed_file=None, *extra):
    i = emu.info
    f = ["--digdir-url", i["digdir_url"], "--well-known-url", i["well_known_url"],
         "--admin-client-id", i["admin_client_id"], "--admin-key-file", i["admin_key_file"],
         "--admin-cert-file", i["admin_cert_file"], "--ca-file", i["ca_file"]]
    if seed_file:
        f += ["--seed-file", seed_file]
    return f + list(extra)


def run(*args, timeout=60):
    t0 = time.monotonic()
    p = subprocess.run(cli(*args), capture_output=True, text=True,
                       timeout=timeout * SLOW)
    p.elapsed = time.monotonic() - t0
    return p


def ensure(emu, seed_file, scopes="nav:test/api", desc=DESC, *extra):
    return run("client", "ensure", desc, "--scopes", scopes, *flags(emu, seed_file, *extra))


def client_ids(emu, desc=DESC):
    """The active clients with this description, as the emulator holds them."""
    return [c["client_id"] for c in emu.clients() if c["description"] == desc]


def delta(before, after):
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def test_new_client_cost_and_rerun_writes_nothing(emulator, seed_file):
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    cid = p.stdout.strip()
    assert client_ids(emulator) == [cid]
    c = emulator.counts()
    assert c.get("token:admin", 0) == 1
    assert c.get("POST /api/v1/clients", 0) == 1
    # One listing to find, one after the create to settle a race with another node.
    assert c.get("GET /api/v1/clients", 0) == 2
    assert c.get("POST /api/v1/clients/{id}/jwks", 0) == 1
    # No read at all: a client just made has no keys, and the upload's answer lists them.
    assert c.get("GET /api/v1/clients/{id}/jwks", 0) == 0
    assert c.get("PUT /api/v1/clients/{id}", 0) == 0

    reg = emulator.client(cid)
    assert reg["scopes"] == ["nav:test/api"]
    assert reg["integration_type"] == "maskinporten"
    assert reg["token_endpoint_auth_method"] == "private_key_jwt"
    kids = [k["kid"] for k in emulator.digdir("GET", "/clients/%s/jwks" % cid).json()["keys"]]
    assert len(kids) == 2 and all(k.startswith("mcp.") and k.endswith(cid) for k in kids)

    before = emulator.counts()
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == cid
    d = delta(before, emulator.counts())
    writes = {k: v for k, v in d.items() if k.split()[0] in ("POST", "PUT", "DELETE") and "/api/" in k}
    assert writes == {}, d
    assert d.get("GET /api/v1/clients") == 1


def test_scope_change_is_one_put(emulator, seed_file):
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    cid = p.stdout.strip()
    before = emulator.counts()
    p = ensure(emulator, seed_file, "ks:fiks nav:test/api")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == cid
    d = delta(before, emulator.counts())
    assert d.get("PUT /api/v1/clients/{id}") == 1
    assert d.get("POST /api/v1/clients", 0) == 0
    assert d.get("POST /api/v1/clients/{id}/jwks", 0) == 0
    reg = emulator.client(cid)
    assert sorted(reg["scopes"]) == ["ks:fiks", "nav:test/api"]
    # The same set in another order is no change.
    before = emulator.counts()
    p = ensure(emulator, seed_file, "nav:test/api ks:fiks")
    assert p.returncode == 0, p.stderr
    assert delta(before, emulator.counts()).get("PUT /api/v1/clients/{id}", 0) == 0


def test_adopts_a_client_made_by_hand(emulator, seed_file):
    made = emulator.add_client(description=DESC, scopes=["nav:test/api"])
    made_id = made["client_id"]
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == made_id
    c = emulator.counts()
    assert c.get("POST /api/v1/clients", 0) == 0
    assert c.get("POST /api/v1/clients/{id}/jwks", 0) == 1
    assert client_ids(emulator) == [made_id]


def test_inaccessible_scope_names_scope_and_org_and_creates_nothing(emulator, seed_file):
    p = ensure(emulator, seed_file, "nav:test/api folkeregister:deling/offentligutenhjemmel")
    assert p.returncode == 1
    assert "folkeregister:deling/offentligutenhjemmel" in p.stderr
    assert "889640782" in p.stderr
    assert "nav:test/api" not in p.stderr.split("scope(s)")[1].split(":")[0]
    c = emulator.counts()
    assert c.get("POST /api/v1/clients", 0) == 0
    assert client_ids(emulator) == []


def test_two_nodes_racing_leave_one_client(emulator, seed_file):
    # Both creates are held back a second, so each node's listing finds no client
    # and both create one.
    emulator.fault(method="POST", path=r"^/api/v1/clients$", delay=1.0, count=2)
    procs = [subprocess.Popen(cli("client", "ensure", DESC, "--scopes", "nav:test/api")
                              + flags(emulator, seed_file),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60 * SLOW) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = client_ids(emulator)
    assert len(ids) == 1
    assert [o.strip() for o, _ in outs] == ids * 2
    assert emulator.counts().get("POST /api/v1/clients", 0) == 2
    assert emulator.counts().get("DELETE /api/v1/clients/{id}", 0) == 1


def test_500_then_success_is_retried(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", status=500, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert emulator.counts()["GET /api/v1/clients"] >= 2
    assert len(client_ids(emulator)) == 1


def test_429_waits_for_retry_after(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", status=429, retry_after=1, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert p.elapsed >= 1.0
    assert len(client_ids(emulator)) == 1


def test_slow_answer_times_out_within_deadline(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", delay=5)
    # Under valgrind the steps before the listing take seconds: the budget stretches.
    p = ensure(emulator, seed_file, "nav:test/api", DESC,
               "--request-timeout", "500ms", "--mount-timeout", "%dms" % (2000 * SLOW))
    emulator.clear_faults()
    assert p.returncode == 1
    assert "timed out" in p.stderr or "deadline" in p.stderr, p.stderr
    assert "GET /clients" in p.stderr
    assert p.elapsed < 4.0 * SLOW
    assert emulator.counts().get("POST /api/v1/clients", 0) == 0


def test_dropped_connections_are_retried(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", drop=True, count=1)
    # A create that got no answer is not repeated blindly: the listing decides.
    emulator.fault(method="POST", path=r"^/api/v1/clients$", drop=True, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert len(client_ids(emulator)) == 1


def test_malformed_create_answer_adopts_what_was_created(emulator, seed_file):
    emulator.fault(method="POST", path=r"^/api/v1/clients$", malformed=True, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert emulator.counts().get("POST /api/v1/clients") == 1
    assert client_ids(emulator) == [p.stdout.strip()]


def test_malformed_listing_is_a_clear_error(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", malformed=True)
    p = ensure(emulator, seed_file)
    emulator.clear_faults()
    assert p.returncode == 1
    # The listing is read as it streams in: garbage is refused at its first byte.
    assert "GET /clients" in p.stderr and "not a list" in p.stderr, p.stderr
    assert emulator.counts().get("POST /api/v1/clients", 0) == 0


def test_admin_token_refreshed_when_it_expires(emulator, seed_file):
    # A 3 s token is refreshed before it runs out: the slow JWKS upload outlives it.
    emulator.settings(admin_token_lifetime=3)
    emulator.fault(method="POST", path=r"/jwks$", delay=3, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    # Under valgrind the rest of the run outlives further 3 s tokens too.
    tokens = emulator.counts()["token:admin"]
    assert tokens >= 2 if WRAPPER else tokens == 2


def test_401_gets_a_fresh_admin_token_once(emulator, seed_file):
    emulator.fault(method="GET", path=r"^/api/v1/clients$", status=401, count=1)
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    assert emulator.counts()["token:admin"] == 2


def test_list_show_and_delete(emulator, seed_file):
    p = ensure(emulator, seed_file)
    assert p.returncode == 0, p.stderr
    cid = p.stdout.strip()

    p = run("client", "list", *flags(emulator))
    assert p.returncode == 0, p.stderr
    assert cid in p.stdout and DESC in p.stdout and "nav:test/api" in p.stdout
    p = run("client", "list", "--json", *flags(emulator))
    assert [c["client_id"] for c in json.loads(p.stdout)] == [cid]

    p = run("client", "show", DESC, "--json", *flags(emulator, seed_file))
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert shown["client"]["client_id"] == cid
    assert len(shown["keys"]) == 2 and all(k["own"] for k in shown["keys"])
    for k in shown["keys"]:
        assert not set(k) & {"d", "p", "q", "dp", "dq", "qi", "n"}
    p = run("client", "show", cid, *flags(emulator))
    assert p.returncode == 0 and cid in p.stdout and "no --seed-file" in p.stdout

    p = run("client", "delete", DESC, *flags(emulator))
    assert p.returncode == 1
    assert "--permanent" in p.stderr and "Nothing was changed" in p.stderr
    assert client_ids(emulator) == [cid]
    assert emulator.counts().get("DELETE /api/v1/clients/{id}", 0) == 0

    p = run("client", "delete", cid, "--permanent", *flags(emulator))
    assert p.returncode == 0, p.stderr
    assert client_ids(emulator) == []
    p = run("client", "list", "--json", *flags(emulator))
    assert json.loads(p.stdout) == []


def test_missing_flags_are_named(emulator, seed_file):
    p = run("client", "ensure", DESC, "--scopes", "nav:test/api")
    assert p.returncode == 1
    assert "--digdir-url" in p.stderr
    p = run("client", "ensure", DESC, *flags(emulator))
    assert p.returncode == 1 and "--seed-file" in p.stderr
    p = run("client", "frobnicate", *flags(emulator))
    assert p.returncode == 2
