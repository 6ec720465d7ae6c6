"""A restarted provider re-finds its apps' clients from its state file (issue 19,
item 1): one GET of the client and one of its keys per app, no listing of the
organisation; and a missing, corrupt, foreign or stale state file is only a
memory lost, never an error or a wrong client."""

import json
import os
import re

import pytest

from provider_harness import Provider, files_of

SCOPE = "skatteetaten:testapi"
APPS = ("a1", "a2", "a3")


def state_path(p):
    return os.path.join(p.dir, "maskinporten.state")


def digdir_requests(emu):
    return {k: v for k, v in emu.counts().items() if re.match(r"^[A-Z]+ /api/v1/", k)}


@pytest.fixture
def served_once(emulator, tmp_path):
    """Three apps served by one provider, which then stopped; the counters reset."""
    p = Provider(emulator, tmp_path)
    with p:
        first = {a: files_of(p.mount("ns", a, scopes=SCOPE)) for a in APPS}
    return p, first


def restart_and_mount(emulator, tmp_path, p):
    before = digdir_requests(emulator)
    with Provider(emulator, tmp_path, seed_file=p.seed_file) as p2:
        files = {a: files_of(p2.mount("ns", a, scopes=SCOPE)) for a in APPS}
    after = digdir_requests(emulator)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return files, {k: v for k, v in delta.items() if v}


def test_a_restart_lists_nothing(emulator, tmp_path, served_once):
    p, first = served_once
    with open(state_path(p)) as f:
        doc = json.load(f)
    assert set(doc["apps"]) == {"dev:ns:%s" % a for a in APPS}
    files, delta = restart_and_mount(emulator, tmp_path, p)
    # Two requests per app: the client and its keys.
    assert delta == {"GET /api/v1/clients/{id}": 3, "GET /api/v1/clients/{id}/jwks": 3}, delta
    assert all(files[a]["MASKINPORTEN_CLIENT_ID"] == first[a]["MASKINPORTEN_CLIENT_ID"]
               for a in APPS)


def test_the_state_file_holds_no_secret(emulator, tmp_path, served_once):
    p, first = served_once
    with open(state_path(p)) as f:
        text = f.read()
    for a in APPS:
        jwk = json.loads(first[a]["MASKINPORTEN_CLIENT_JWK"])
        for member in ("d", "p", "q", "dp", "dq", "qi", "n"):
            assert jwk[member] not in text
    assert oct(os.stat(state_path(p)).st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("content", [
    "not json at all",
    json.dumps({"version": 99, "cluster": "dev", "apps": {}}),
    json.dumps({"version": 1, "cluster": "another", "apps": {}}),
    json.dumps({"version": 1, "cluster": "dev", "apps": {"dev:ns:a1": {"client_id": "../x"}}}),
])
def test_an_unusable_state_file_means_a_listing(emulator, tmp_path, served_once, content):
    p, first = served_once
    with open(state_path(p), "w") as f:
        f.write(content)
    files, delta = restart_and_mount(emulator, tmp_path, p)
    assert delta.get("GET /api/v1/clients", 0) >= 1, delta
    assert delta.get("POST /api/v1/clients", 0) == 0, delta
    assert all(files[a]["MASKINPORTEN_CLIENT_ID"] == first[a]["MASKINPORTEN_CLIENT_ID"]
               for a in APPS)


def test_a_stale_state_file_is_checked_at_digdir(emulator, tmp_path, served_once):
    """The file pins a1 to a client that is gone and a2 to a3's client: both are
    checked at DigDir, dropped, and each app ends with its own client."""
    p, first = served_once
    ids = {a: first[a]["MASKINPORTEN_CLIENT_ID"] for a in APPS}
    with open(state_path(p)) as f:
        doc = json.load(f)
    doc["apps"]["dev:ns:a1"]["client_id"] = "00000000-0000-0000-0000-000000000000"
    doc["apps"]["dev:ns:a2"]["client_id"] = ids["a3"]
    with open(state_path(p), "w") as f:
        json.dump(doc, f)
    files, delta = restart_and_mount(emulator, tmp_path, p)
    assert {a: files[a]["MASKINPORTEN_CLIENT_ID"] for a in APPS} == ids
    assert delta.get("POST /api/v1/clients", 0) == 0, delta


def test_a_missing_state_file_means_a_listing(emulator, tmp_path, served_once):
    p, first = served_once
    os.unlink(state_path(p))
    files, delta = restart_and_mount(emulator, tmp_path, p)
    assert delta.get("GET /api/v1/clients", 0) >= 1, delta
    assert all(files[a]["MASKINPORTEN_CLIENT_ID"] == first[a]["MASKINPORTEN_CLIENT_ID"]
               for a in APPS)
