"""Cross-checks of the keys module through the real binary (`keys derive`,
`keys grant`), against jwcrypto and against an independent Python
implementation of the derivation as docs/key-derivation.md describes it.

Run: MCP_BIN=$PWD/build/maskinporten-csi-provider /usr/bin/python3 -m pytest -q tests/integration/test_keys.py
"""

import base64
import json
import math
import os
import stat
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from jwcrypto import jwk, jwt

from provider_harness import SLOW, cli

SEED = bytes(range(32))


def run(*args, check=True):
    p = subprocess.run(cli("keys", *args), capture_output=True, text=True, timeout=60 * SLOW)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr}")
    return p


@pytest.fixture
def seed_file(tmp_path):
    path = tmp_path / "seed"
    path.write_bytes(SEED)
    path.chmod(0o600)
    return str(path)


def b64int(s):
    return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")


def derive(seed_file, client="client-1", *extra):
    return json.loads(run("derive", "--seed-file", seed_file, "--client-id", client, *extra).stdout)


def test_private_jwk_is_a_consistent_key(seed_file, tmp_path):
    priv = tmp_path / "priv.json"
    pub = derive(seed_file, "client-1", "--epoch", "20000", "--private", str(priv))
    text = priv.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    data = json.loads(text)
    assert list(data) == ["use", "kty", "kid", "alg", "n", "e", "d", "p", "q", "dp", "dq", "qi"]
    assert list(pub) == ["use", "kty", "kid", "alg", "n", "e"]
    assert {k: data[k] for k in pub} == pub

    key = jwk.JWK.from_json(text)
    assert key.has_private and json.loads(key.export_public())["kty"] == "RSA"
    n, e, d, p, q = (b64int(data[k]) for k in ("n", "e", "d", "p", "q"))
    dp, dq, qi = (b64int(data[k]) for k in ("dp", "dq", "qi"))
    assert n.bit_length() == 2048 and e == 65537
    assert p * q == n and p > q
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    assert d * e % lam == 1 and d < lam and d > 2**1024
    assert dp == d % (p - 1) and dq == d % (q - 1) and qi * q % p == 1
    assert abs(p - q) > 2 ** (1024 - 100)
    # jwcrypto's own view (cryptography's RSA checks) of the same numbers.
    nums = key.get_op_key("sign").private_numbers()
    assert (nums.p * nums.q, nums.d) == (n, d)
    # Minimal encodings: no leading zero byte in any member.
    for k in ("n", "e", "d", "p", "q", "dp", "dq", "qi"):
        raw = base64.urlsafe_b64decode(data[k] + "=" * (-len(data[k]) % 4))
        assert raw[0] != 0 and "=" not in data[k]


def test_thumbprint_matches_jwcrypto(seed_file):
    out = derive(seed_file, "client-1", "--epoch", "7", "--json")
    assert out["epoch"] == 7 and out["kid"] == out["jwk"]["kid"]
    assert out["thumbprint"] == jwk.JWK(**out["jwk"]).thumbprint()


def test_grant_verifies_with_jwcrypto(seed_file):
    pub = derive(seed_file, "client-1", "--epoch", "3")
    before = int(time.time())
    token = run("grant", "--seed-file", seed_file, "--client-id", "client-1", "--epoch", "3",
                "--aud", "https://test.maskinporten.no/", "--scope", "nav:a nav:b").stdout.strip()
    after = int(time.time())
    t = jwt.JWT(jwt=token, key=jwk.JWK(**pub), algs=["RS256"],
                check_claims={"exp": None})
    header = json.loads(t.header)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": pub["kid"]}
    claims = json.loads(t.claims)
    assert claims["aud"] == "https://test.maskinporten.no/"
    assert claims["iss"] == "client-1"
    assert claims["scope"] == "nav:a nav:b"
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == 120
    assert len(claims["jti"]) == 36 and claims["jti"][14] == "4"
    # Signed by that key and no other.
    other = derive(seed_file, "client-1", "--epoch", "4")
    with pytest.raises(Exception):
        jwt.JWT(jwt=token, key=jwk.JWK(**other), algs=["RS256"])


def test_two_processes_derive_identical_keys(seed_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    derive(seed_file, "client-1", "--epoch", "42", "--private", str(a))
    derive(seed_file, "client-1", "--epoch", "42", "--private", str(b))
    assert a.read_bytes() == b.read_bytes()


def test_epoch_and_client_change_the_key(seed_file):
    base = derive(seed_file, "client-1", "--epoch", "10")
    assert derive(seed_file, "client-1", "--epoch", "11")["n"] != base["n"]
    assert derive(seed_file, "client-2", "--epoch", "10")["n"] != base["n"]
    assert derive(seed_file, "client-1", "--epoch", "10") == base


def test_at_selects_the_epoch(seed_file):
    # 2024-01-01T00:00:00Z = 1704067200; 30-day epochs: epoch 657.
    by_date = derive(seed_file, "c", "--at", "2024-01-01T00:00:00Z")
    assert by_date["kid"].split(".")[2] == "657"
    assert derive(seed_file, "c", "--at", "1704067200") == by_date
    assert derive(seed_file, "c", "--epoch", "657") == by_date
    assert derive(seed_file, "c", "--at", "1704067200", "--epoch-length", "1h")["kid"].split(".")[2] == "473352"
    assert run("derive", "--seed-file", seed_file, "--client-id", "c", "--at", "2024-02-30T00:00:00Z",
               check=False).returncode == 2


@pytest.mark.parametrize("size,mode,message", [
    (31, 0o600, "too short"),
    (32, 0o644, "must not be readable"),
    (32, 0o640, "group or others"),
    (32, 0o604, "group or others"),
])
def test_bad_seed_files_are_refused(tmp_path, size, mode, message):
    path = tmp_path / "seed"
    path.write_bytes(bytes(size))
    path.chmod(mode)
    p = run("derive", "--seed-file", str(path), "--client-id", "c", check=False)
    assert p.returncode == 1
    assert message in p.stderr and str(path) in p.stderr
    assert p.stdout == ""


def test_seed_directory_and_missing_file_are_refused(tmp_path):
    p = run("derive", "--seed-file", str(tmp_path), "--client-id", "c", check=False)
    assert p.returncode == 1 and "not a regular file" in p.stderr
    p = run("derive", "--seed-file", str(tmp_path / "nope"), "--client-id", "c", check=False)
    assert p.returncode == 1 and "cannot open" in p.stderr


def test_seed_symlink_is_followed(seed_file, tmp_path):
    # Kubernetes projects Secret keys as symlinks into ..data/.
    link = tmp_path / "link"
    link.symlink_to(seed_file)
    assert derive(str(link), "c", "--epoch", "1") == derive(seed_file, "c", "--epoch", "1")


def test_private_file_mode_and_no_overwrite(seed_file, tmp_path):
    priv = tmp_path / "priv.json"
    old = os.umask(0)
    try:
        derive(seed_file, "c", "--epoch", "1", "--private", str(priv))
    finally:
        os.umask(old)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    before = priv.read_bytes()
    p = run("derive", "--seed-file", seed_file, "--client-id", "c", "--epoch", "2", "--private", str(priv),
            check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    assert priv.read_bytes() == before
    # A symlink is refused too, and its target left alone.
    target = tmp_path / "target"
    target.write_text("x")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    p = run("derive", "--seed-file", seed_file, "--client-id", "c", "--private", str(link), check=False)
    assert p.returncode == 1 and target.read_text() == "x"


def test_usage_errors_exit_2(seed_file):
    assert run("derive", "--seed-file", seed_file, check=False).returncode == 2
    assert run("derive", "--client-id", "c", check=False).returncode == 2
    assert run("frobnicate", check=False).returncode == 2
    assert run("derive", "--seed-file", seed_file, "--client-id", "c", "--epoch", "1", "--at", "5",
               check=False).returncode == 2
    assert run("grant", "--seed-file", seed_file, "--client-id", "c", "--scope", "s",
               check=False).returncode == 2


def test_nothing_secret_on_stdout_or_stderr(seed_file, tmp_path):
    p = run("derive", "--seed-file", seed_file, "--client-id", "c", "--epoch", "1",
            "--private", str(tmp_path / "k"))
    priv = json.loads((tmp_path / "k").read_text())
    for k in ("d", "p", "q", "dp", "dq", "qi"):
        assert priv[k] not in p.stdout and priv[k] not in p.stderr
    assert SEED.hex() not in p.stdout + p.stderr


# ---- an independent implementation of docs/key-derivation.md -------------

SMALL_PRIMES = [p for p in range(3, 65536, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]


def _is_probable_prime(n):
    # Miller-Rabin with the first 40 primes as bases: plenty for a cross-check.
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in SMALL_PRIMES[:40]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(prk, client, epoch, which, k):
    while True:
        info = f"rsa2048|{client}|{epoch}|{which}|{k}".encode()
        c = bytearray(HKDFExpand(hashes.SHA256(), 128, info).derive(prk))
        c[0] |= 0xC0
        c[127] |= 1
        c = int.from_bytes(c, "big")
        struck = bytearray(4096)
        for p in SMALL_PRIMES:
            for j in range((-c) * pow(2, -1, p) % p, 4096, p):
                struck[j] = 1
        j = (1 - c) * pow(2, -1, 65537) % 65537
        if j < 4096:
            struck[j] = 1
        for j in range(4096):
            y = c + 2 * j
            if y.bit_length() != 1024:
                break
            if not struck[j] and _is_probable_prime(y):
                return y, k
        k += 1


def python_derive(seed, client, epoch):
    # HKDF-Extract (RFC 5869) is HMAC-SHA256 keyed with the salt.
    h = hmac.HMAC(b"maskinporten-csi-provider/v1", hashes.SHA256())
    h.update(seed)
    prk = h.finalize()
    seed_id = HKDFExpand(hashes.SHA256(), 4, b"seed-id").derive(prk).hex()
    e = 65537
    p, _ = _prime(prk, client, epoch, "p", 0)
    kq = 0
    while True:
        q, kq = _prime(prk, client, epoch, "q", kq)
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        d = pow(e, -1, lam) if math.gcd(e, lam) == 1 else 0
        if abs(p - q) > 2**924 and (p * q).bit_length() == 2048 and d > 2**1024:
            break
        kq += 1
    return seed_id, p * q


@pytest.mark.parametrize("client,epoch", [("client-1", 20000), ("x", -3)])
def test_documented_derivation_matches_binary(seed_file, client, epoch):
    seed_id, n = python_derive(SEED, client, epoch)
    pub = derive(seed_file, client, "--epoch", str(epoch)) if epoch >= 0 else None
    if pub is None:
        # --epoch takes no negative numbers; --at in epoch -3 of 1h epochs.
        pub = derive(seed_file, client, "--epoch-length", "1h", "--at", str(-3 * 3600 + 5))
    assert pub["kid"] == f"mcp.{seed_id}.{epoch}.{client}"
    assert b64int(pub["n"]) == n
