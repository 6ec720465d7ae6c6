"""maskinporten.env is sourced by shells in every pod of an app: whatever the
metadata document and DigDir say, sourcing it sets the variables to exactly
the values of the other files and runs nothing. The emulator serves a
metadata document whose URLs carry shell syntax; the issuer must still match
the well-known URL (and, since issue 16 item 3, the endpoints the issuer's
origin), so the hostile text sits in their paths and queries."""

import json
import os
import subprocess

import grpc

from provider_harness import SLOW, Provider, files_of

SCOPE = "skatteetaten:testapi"
WELL_KNOWN = "/.well-known/oauth-authorization-server"
VARS = ["MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_CLIENT_JWK", "MASKINPORTEN_SCOPES",
        "MASKINPORTEN_WELL_KNOWN_URL", "MASKINPORTEN_ISSUER", "MASKINPORTEN_JWKS_URI",
        "MASKINPORTEN_TOKEN_ENDPOINT"]


def hostile_metadata(emu, canary):
    """The emulator's own metadata with shell syntax in the endpoint URLs."""
    base = emu.info["well_known_url"][:-len(WELL_KNOWN)]
    meta = json.loads(emu.request("GET", WELL_KNOWN).body)
    assert meta["issuer"].rstrip("/") == base.rstrip("/")
    # Fetched by the provider (the admin token): quotes and command substitutions in a
    # query the emulator ignores.
    meta["token_endpoint"] = base + "/token?a='$(touch${IFS}%s)'&b='`touch${IFS}%s`'" % (
        canary, canary)
    # Never fetched: every kind of quoting at once (no whitespace: a URL holds none, and
    # the provider refuses such a document, see the test below).
    meta["jwks_uri"] = base + "/jwk?x=';touch${IFS}%s;'\"$(touch${IFS}%s)\"\\'\\\\'$HOME" % (
        canary, canary)
    return meta


def test_sourcing_the_env_file_runs_nothing(emulator, tmp_path):
    canary = str(tmp_path / "PWNED")
    meta = hostile_metadata(emulator, canary)
    emulator.fault(method="GET", path="^%s$" % WELL_KNOWN, status=200, body=meta)
    with Provider(emulator, tmp_path) as p:
        files = files_of(p.mount("team-e", "app", scopes=SCOPE, timeout=30 * SLOW))
    assert files["MASKINPORTEN_TOKEN_ENDPOINT"] == meta["token_endpoint"]
    assert files["MASKINPORTEN_JWKS_URI"] == meta["jwks_uri"]

    d = tmp_path / "mounted"
    d.mkdir()
    (d / "maskinporten.env").write_text(files["maskinporten.env"])
    # Source it as a pod's shell would, then print each variable NUL-terminated.
    script = ". ./maskinporten.env && " + " && ".join(
        "printf '%%s\\0' \"$%s\"" % v for v in VARS)
    # Both are Essential on Debian: a missing one fails here rather than passing untested.
    for shell in ("/bin/sh", "/bin/bash"):
        out = subprocess.run([shell, "-c", script], cwd=str(d), capture_output=True,
                             timeout=10 * SLOW)
        assert not os.path.exists(canary), "sourcing the env file ran a command"
        assert out.returncode == 0, out.stderr
        values = out.stdout.decode().split("\0")[:-1]
        assert dict(zip(VARS, values)) == {v: files[v] for v in VARS}


def test_a_metadata_url_with_whitespace_is_refused(emulator, tmp_path):
    """A URL holds no whitespace: a metadata document whose endpoint does (a newline that
    would start a new line of the env file) is refused as a whole, naming it."""
    meta = json.loads(emulator.request("GET", WELL_KNOWN).body)
    meta["jwks_uri"] = meta["jwks_uri"] + "?x=1\nMASKINPORTEN_CLIENT_ID=evil"
    emulator.fault(method="GET", path="^%s$" % WELL_KNOWN, status=200, body=meta)
    with Provider(emulator, tmp_path) as p:
        try:
            p.mount("team-e", "app", scopes=SCOPE, timeout=30 * SLOW)
            raise AssertionError("a metadata document with a newline in a URL was accepted")
        except grpc.RpcError as e:
            assert "jwks_uri" in e.details() and "origin" in e.details(), e.details()
