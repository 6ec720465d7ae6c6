"""`token --dir DIR`: reads a mounted directory written by hand, gets an access
token from the emulated Maskinporten, and the token is checked with jwcrypto
against the emulator's own /jwk, independently of the C code."""

import json
import os
import subprocess

import pytest
from jwcrypto import jwk, jwt

from harness import new_key, public_jwk
from provider_harness import SLOW, cli


def run(*args):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60 * SLOW)


def write_dir(path, emu, client_id, private_jwk_json, scopes):
    path.mkdir()
    files = {
        "MASKINPORTEN_CLIENT_ID": client_id,
        "MASKINPORTEN_CLIENT_JWK": private_jwk_json,
        "MASKINPORTEN_SCOPES": scopes,
        "MASKINPORTEN_ISSUER": emu.issuer,
        "MASKINPORTEN_TOKEN_ENDPOINT": emu.info["token_endpoint"],
    }
    for name, value in files.items():
        fd = os.open(str(path / name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, value.encode())
        os.close(fd)
    return str(path)


def verify(emu, token):
    """The access token's claims, after checking its signature with the emulator's JWKS."""
    keys = jwk.JWKSet.from_json(emu.request("GET", "/jwk").body)
    return json.loads(jwt.JWT(jwt=token, key=keys).claims)


@pytest.fixture
def hand_client(emulator):
    key = new_key()
    c = emulator.add_client(description="dev:team:byhand", scopes=["nav:test/api"],
                            jwks=[public_jwk(key)])
    return c["client_id"], key


def test_token_from_a_directory(emulator, hand_client, tmp_path):
    cid, key = hand_client
    d = write_dir(tmp_path / "mnt", emulator, cid, key.export_private(), "nav:test/api\n")
    p = run("token", "--dir", d, "--ca-file", emulator.info["ca_file"])
    assert p.returncode == 0, p.stderr
    claims = verify(emulator, p.stdout.strip())
    assert claims["client_id"] == cid
    assert claims["scope"] == "nav:test/api"
    assert claims["consumer"]["ID"] == "0192:889640782"
    assert emulator.counts()["token:client"] == 1

    p = run("token", "--dir", d, "--json", "--ca-file", emulator.info["ca_file"])
    assert p.returncode == 0, p.stderr
    answer = json.loads(p.stdout)
    assert answer["token_type"] == "Bearer" and answer["expires_in"] > 0
    assert verify(emulator, answer["access_token"])["client_id"] == cid


def test_unregistered_scope_is_a_clear_invalid_scope(emulator, hand_client, tmp_path):
    cid, key = hand_client
    d = write_dir(tmp_path / "mnt", emulator, cid, key.export_private(), "ks:fiks")
    p = run("token", "--dir", d, "--ca-file", emulator.info["ca_file"])
    assert p.returncode == 1
    assert "invalid_scope" in p.stderr
    assert "not registered on the client" in p.stderr
    assert p.stdout == ""
    # The private key never reaches the output.
    assert json.loads(key.export_private())["d"] not in p.stderr


def test_untrusted_ca_fails(emulator, hand_client, tmp_path):
    cid, key = hand_client
    d = write_dir(tmp_path / "mnt", emulator, cid, key.export_private(), "nav:test/api")
    p = run("token", "--dir", d)
    assert p.returncode == 1
    assert "POST /token" in p.stderr
    assert emulator.counts().get("token:client", 0) == 0


def test_missing_file_is_named(emulator, tmp_path):
    (tmp_path / "empty").mkdir()
    p = run("token", "--dir", str(tmp_path / "empty"))
    assert p.returncode == 1 and "MASKINPORTEN_CLIENT_ID" in p.stderr
    p = run("token")
    assert p.returncode == 2 and "--dir" in p.stderr


def test_derived_key_of_a_provisioned_client(emulator, tmp_path):
    """The whole chain: client ensure registers the derived keys, keys derive
    --private gives this epoch's private JWK, token uses it."""
    seed = tmp_path / "seed"
    fd = os.open(str(seed), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(48))
    os.close(fd)
    i = emulator.info
    p = run("client", "ensure", "dev:team:derived", "--scopes", "nav:test/api ks:fiks",
            "--digdir-url", i["digdir_url"], "--well-known-url", i["well_known_url"],
            "--admin-client-id", i["admin_client_id"], "--admin-key-file", i["admin_key_file"],
            "--admin-cert-file", i["admin_cert_file"], "--ca-file", i["ca_file"],
            "--seed-file", str(seed))
    assert p.returncode == 0, p.stderr
    cid = p.stdout.strip()
    priv = tmp_path / "jwk"
    p = run("keys", "derive", "--seed-file", str(seed), "--client-id", cid, "--private", str(priv))
    assert p.returncode == 0, p.stderr
    d = write_dir(tmp_path / "mnt", emulator, cid, priv.read_text(), "nav:test/api ks:fiks")
    p = run("token", "--dir", d, "--ca-file", i["ca_file"])
    assert p.returncode == 0, p.stderr
    claims = verify(emulator, p.stdout.strip())
    assert claims["client_id"] == cid and claims["scope"] == "nav:test/api ks:fiks"
