"""The emulator enforces what Maskinporten and DigDir enforce (see
docs/digdir-api.md, which names the public source of each rule). Each test
drives the real emulator process over HTTPS."""

import http.client
import json
import os
import re
import signal
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jws

from harness import (EMULATOR, JWT_BEARER, PYTHON, client_grant, decode_jwt, grant_claims, new_key,
                     public_jwk, sign)

ORG = "889640782"
OTHER_ORG = "974761076"
THIRD_ORG = "983887457"
SCOPE = "nav:test/api"
YEAR = 365 * 24 * 3600
ADMIN_SCOPES = ("idporten:dcr.read", "idporten:dcr.write", "idporten:dcr.modify", "idporten:scopes.write")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def keys():
    return [new_key(kid="key-%d" % i) for i in range(7)]


def registration(**over):
    body = {
        "access_token_lifetime": 3600,
        "application_type": "web",
        "authorization_lifetime": 7200,
        "client_name": "maskinporten-csi-provider",
        "client_uri": "https://example.org",
        "description": "cluster:ns:app",
        "frontchannel_logout_session_required": False,
        "grant_types": [JWT_BEARER],
        "integration_type": "maskinporten",
        "post_logout_redirect_uris": None,
        "redirect_uris": None,
        "refresh_token_usage": "ONETIME",
        "scopes": ["nav:test/api"],
        "sso_disabled": False,
        "token_endpoint_auth_method": "private_key_jwt",
    }
    body.update(over)
    return body


@pytest.fixture
def app(emulator, keys):
    """A client made by hand with keys[0] registered, consuming nav:test/api and ks:fiks."""
    c = emulator.add_client(scopes=["nav:test/api", "ks:fiks"], description="cluster:ns:app",
                            jwks=[public_jwk(keys[0])])
    return c["client_id"]


def mp_error(r, error, code=None, status=400, text=None):
    assert r.status == status, r
    body = r.json()
    assert body["error"] == error, body
    assert re.search(r" \(trace_id: [0-9a-f]+\)$", body["error_description"]), body
    if code:
        assert body["error_uri"].endswith("/errors/" + code), body
    if text:
        assert text in body["error_description"], body
    return body


def dd_error(r, status, text=None):
    assert r.status == status, r
    body = r.json()
    for k in ("status", "timestamp", "correlation_id", "errors", "error", "error_description"):
        assert k in body, body
    assert body["status"] == status
    assert body["errors"] and all("errorMessage" in e and "isFieldError" in e for e in body["errors"])
    if text:
        assert text in body["error_description"], body
    return body


# ---------------------------------------------------------------------------
# Process, files, metadata


def test_state_files_and_info(emulator):
    info = emulator.info
    with open(os.path.join(emulator.state_dir, "emulator.json")) as f:
        assert json.load(f) == info
    port = info["base_url"].rsplit(":", 1)[1]
    assert info["base_url"] == "https://127.0.0.1:" + port
    assert info["issuer"] == info["base_url"] + "/"
    assert info["well_known_url"] == info["base_url"] + "/.well-known/oauth-authorization-server"
    assert info["token_endpoint"] == info["base_url"] + "/token"
    assert info["jwks_uri"] == info["base_url"] + "/jwk"
    assert info["control_url"] == info["base_url"] + "/_emulator"
    assert info["org_number"] == ORG
    with open(info["admin_key_file"], "rb") as f:
        pem = f.read()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.stat(info["admin_key_file"]).st_mode & 0o077 == 0
    with open(info["admin_cert_file"], "rb") as f:
        chain = f.read()
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    leaf = x509.load_pem_x509_certificate(chain.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----")
    assert leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == ORG
    key = serialization.load_pem_private_key(pem, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_well_known_document(emulator):
    r = emulator.request("GET", "/.well-known/oauth-authorization-server")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["issuer"] == emulator.issuer and doc["issuer"].endswith("/")
    assert doc["jwks_uri"] == emulator.base_url + "/jwk"
    assert doc["token_endpoint"] == emulator.base_url + "/token"
    assert doc["grant_types_supported"] == [JWT_BEARER]
    assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "RS384", "RS512"]


def test_keep_alive_and_content_length(emulator):
    conn = emulator.connection()
    try:
        for _ in range(3):
            conn.request("GET", "/jwk")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and int(r.getheader("Content-Length")) == len(body)
            assert r.version == 11 and not r.will_close
    finally:
        conn.close()


def test_sigterm_exits_cleanly(tmp_path):
    proc = subprocess.Popen([PYTHON, EMULATOR, "--state-dir", str(tmp_path), "--http"], stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert json.loads(line)["base_url"].startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_plain_http_fixture(emulator_http):
    assert emulator_http.base_url.startswith("http://")
    r = emulator_http.request("GET", "/.well-known/oauth-authorization-server")
    assert r.status == 200 and r.json()["issuer"] == emulator_http.base_url + "/"


# ---------------------------------------------------------------------------
# Maskinporten: successful grants


def verify_access_token(emu, token):
    jwks = emu.request("GET", "/jwk").json()
    header, claims = decode_jwt(token)
    assert header["alg"] == "RS256"
    key = jwk.JWK(**[k for k in jwks["keys"] if k["kid"] == header["kid"]][0])
    s = jws.JWS()
    s.deserialize(token)
    s.verify(key)  # raises when the signature does not hold
    return claims


def test_admin_grant_with_x5c(emulator):
    r = emulator.token(emulator.admin_grant())
    assert r.status == 200, r
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "idporten:dcr.read idporten:dcr.write idporten:scopes.write"
    claims = verify_access_token(emulator, body["access_token"])
    assert claims["client_id"] == emulator.info["admin_client_id"]
    assert "client_orgno" not in claims  # only consumer, as Maskinporten promises
    assert claims["client_amr"] == "virksomhetssertifikat"
    assert claims["consumer"] == {"authority": "iso6523-actorid-upis", "ID": "0192:" + ORG}
    assert claims["iss"] == emulator.issuer and claims["exp"] - claims["iat"] == 3600
    assert emulator.counts()["token:admin"] == 1


def test_admin_grant_with_preregistered_kid(emulator):
    h = {"alg": "RS256", "kid": emulator.info["admin_kid"]}
    c = grant_claims(emulator.info["admin_client_id"], emulator.issuer, "idporten:dcr.read")
    r = emulator.token(sign(emulator.admin_key(), h, c))
    assert r.status == 200, r
    assert decode_jwt(r.json()["access_token"])[1]["client_amr"] == "private_key_jwt"


def test_app_grant(emulator, app, keys):
    r = emulator.token(client_grant(emulator, keys[0], app, "nav:test/api ks:fiks"))
    assert r.status == 200, r
    body = r.json()
    assert body["scope"] == "nav:test/api ks:fiks" and body["token_type"] == "Bearer"
    claims = verify_access_token(emulator, body["access_token"])
    assert claims["client_id"] == app and claims["client_amr"] == "private_key_jwt"
    assert claims["consumer"]["ID"] == "0192:" + ORG and "client_orgno" not in claims
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert emulator.counts()["token:client"] == 1


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
def test_app_grant_other_rsa_algs(emulator, app, keys, alg):
    r = emulator.token(client_grant(emulator, keys[0], app, "nav:test/api", header={"alg": alg}))
    assert r.status == 200, r


def test_aud_as_one_element_list(emulator, app, keys):
    r = emulator.token(client_grant(emulator, keys[0], app, "nav:test/api", aud=[emulator.issuer]))
    assert r.status == 200, r


def test_token_lifetimes_settable(emulator, app, keys):
    emulator.settings(admin_token_lifetime=50, client_token_lifetime=7)
    assert emulator.token(emulator.admin_grant()).json()["expires_in"] == 50
    assert emulator.token(client_grant(emulator, keys[0], app, "nav:test/api")).json()["expires_in"] == 7


# ---------------------------------------------------------------------------
# Maskinporten: every rule, broken one at a time


def test_form_body_only(emulator, app, keys):
    a = client_grant(emulator, keys[0], app, "nav:test/api")
    r = emulator.request("POST", "/token", json_body={"grant_type": JWT_BEARER, "assertion": a})
    mp_error(r, "invalid_request", "MP-011")


def test_wrong_grant_type(emulator, app, keys):
    a = client_grant(emulator, keys[0], app, "nav:test/api")
    r = emulator.request("POST", "/token", form={"grant_type": "client_credentials", "assertion": a})
    mp_error(r, "unsupported_grant_type")


def test_garbage_assertion(emulator):
    mp_error(emulator.token("not.a.jwt"), "invalid_request", "MP-011")


def test_bad_signature(emulator, app, keys):
    forged = jwk.JWK(**dict(json.loads(keys[1].export_private()), kid=keys[0]["kid"]))
    mp_error(emulator.token(client_grant(emulator, forged, app, "nav:test/api")), "invalid_grant", "MP-124")


def test_hmac_alg_rejected(emulator, app):
    key = jwk.JWK.generate(kty="oct", size=256)
    a = sign(key, {"alg": "HS256", "kid": "key-0"}, grant_claims(app, emulator.issuer, "nav:test/api"))
    mp_error(emulator.token(a), "invalid_grant", "MP-124")


def test_header_needs_kid_or_x5c(emulator, app, keys):
    a = sign(keys[0], {"alg": "RS256"}, grant_claims(app, emulator.issuer, "nav:test/api"))
    mp_error(emulator.token(a), "invalid_grant", "MP-100")


def test_wrong_aud(emulator, app, keys):
    a = client_grant(emulator, keys[0], app, "nav:test/api", aud=emulator.base_url)  # no trailing slash
    mp_error(emulator.token(a), "invalid_grant", "MP-110", text="aud")


def test_wrong_iss(emulator, app, keys):
    a = client_grant(emulator, keys[0], "00000000-0000-4000-8000-000000000000", "nav:test/api")
    mp_error(emulator.token(a), "invalid_grant", "MP-100", text="Client not found")


def test_iat_in_the_future(emulator, app, keys):
    now = int(time.time())
    ok = client_grant(emulator, keys[0], app, "nav:test/api", iat=now + 5, exp=now + 60)
    assert emulator.token(ok).status == 200
    a = client_grant(emulator, keys[0], app, "nav:test/api", iat=now + 30, exp=now + 60)
    mp_error(emulator.token(a), "invalid_grant", "MP-130", text="Issue time is after now")


def test_iat_too_old(emulator, app, keys):
    now = int(time.time())
    a = client_grant(emulator, keys[0], app, "nav:test/api", iat=now - 40, exp=now + 60)
    mp_error(emulator.token(a), "invalid_grant", "MP-130")


def test_grant_lifetime_at_most_120s(emulator, app, keys):
    now = int(time.time())
    ok = client_grant(emulator, keys[0], app, "nav:test/api", iat=now, exp=now + 120)
    assert emulator.token(ok).status == 200
    a = client_grant(emulator, keys[0], app, "nav:test/api", iat=now, exp=now + 121)
    mp_error(emulator.token(a), "invalid_grant", "MP-130")


def test_expired_grant(emulator, app, keys):
    now = int(time.time())
    a = client_grant(emulator, keys[0], app, "nav:test/api", iat=now - 5, exp=now - 1)
    mp_error(emulator.token(a), "invalid_grant", "MP-130", text="JWT is expired")


def test_jti_single_use(emulator, app, keys):
    a = client_grant(emulator, keys[0], app, "nav:test/api")
    assert emulator.token(a).status == 200
    mp_error(emulator.token(a), "invalid_grant", "MP-012", text="Grant is used before")


def test_unknown_kid(emulator, app, keys):
    mp_error(emulator.token(client_grant(emulator, keys[1], app, "nav:test/api")),
             "invalid_grant", text="Unknown key identifier (kid) for client")


def test_expired_key(emulator, keys):
    c = emulator.add_client(scopes=["nav:test/api"], jwks=[public_jwk(keys[0], exp=int(time.time()) - 10)])
    mp_error(emulator.token(client_grant(emulator, keys[0], c["client_id"], "nav:test/api")),
             "invalid_grant", "MP-121", text="Expired key")


def test_scope_required(emulator, app, keys):
    mp_error(emulator.token(client_grant(emulator, keys[0], app, "")), "invalid_scope", "MP-200")


def test_scope_not_registered(emulator, app, keys):
    body = mp_error(emulator.token(client_grant(emulator, keys[0], app, "nav:test/api skatteetaten:testapi")),
                    "invalid_scope", "MP-200", text="invalid scopes for client")
    assert "skatteetaten:testapi" in body["error_description"]


def test_scope_no_longer_accessible(emulator, app, keys):
    emulator.seed_scope("nav:test/api", "983887457", consumers=[{"orgno": ORG, "state": "DENIED"}])
    body = mp_error(emulator.token(client_grant(emulator, keys[0], app, "nav:test/api")),
                    "forbidden", "MP-250", status=403)
    assert "nav:test/api" in body["error_description"]


def test_admin_scope_not_allowed(emulator):
    mp_error(emulator.token(emulator.admin_grant(scope="idporten:dcr.read nav:test/api")), "invalid_scope", "MP-200")


def test_admin_x5c_from_another_ca(emulator):
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, ORG), x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = __import__("datetime").datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + __import__("datetime").timedelta(days=1))
            .sign(key, hashes.SHA256()))
    import base64
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    a = sign(jwk.JWK.from_pem(pem), {"alg": "RS256", "x5c": x5c},
             grant_claims(emulator.info["admin_client_id"], emulator.issuer, "idporten:dcr.read"))
    mp_error(emulator.token(a), "invalid_grant", "MP-120")


def test_admin_x5c_not_an_array(emulator):
    x5c = emulator.admin_chain_x5c()
    mp_error(emulator.token(emulator.admin_grant(header={"x5c": x5c[0]})), "invalid_grant", "MP-123")


def test_admin_x5c_signed_by_other_key(emulator, keys):
    a = sign(keys[0], {"alg": "RS256", "x5c": emulator.admin_chain_x5c()},
             grant_claims(emulator.info["admin_client_id"], emulator.issuer, "idporten:dcr.read"))
    mp_error(emulator.token(a), "invalid_grant", "MP-124")


def test_revoked_admin(emulator):
    token = emulator.token(emulator.admin_grant()).json()["access_token"]
    assert emulator.digdir("GET", "/clients", token=token).status == 200
    emulator.settings(revoke_admin=True)
    mp_error(emulator.token(emulator.admin_grant()), "invalid_grant")
    dd_error(emulator.digdir("GET", "/clients", token=token), 401)


def test_clock_offset(emulator, app, keys):
    emulator.settings(clock_offset=300)
    mp_error(emulator.token(client_grant(emulator, keys[0], app, "nav:test/api")), "invalid_grant", "MP-130")
    later = int(time.time()) + 300
    a = client_grant(emulator, keys[0], app, "nav:test/api", iat=later, exp=later + 30)
    assert emulator.token(a).status == 200


# ---------------------------------------------------------------------------
# DigDir: authentication


def test_delegationsources_needs_no_token(emulator):
    r = emulator.request("GET", "/api/v1/delegationsources")
    assert r.status == 200 and r.json()[0]["name"] == "altinn"


def test_digdir_needs_bearer_token(emulator, app, keys):
    r = emulator.request("GET", "/api/v1/clients")
    dd_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    dd_error(emulator.digdir("GET", "/clients", token="garbage"), 401)
    app_token = emulator.token(client_grant(emulator, keys[0], app, "nav:test/api")).json()["access_token"]
    dd_error(emulator.digdir("GET", "/clients", token=app_token), 403)
    forged = sign(keys[1], {"alg": "RS256", "kid": decode_jwt(app_token)[0]["kid"]}, decode_jwt(app_token)[1])
    dd_error(emulator.digdir("GET", "/clients", token=forged), 401)


def test_digdir_expired_token(emulator):
    # Tokens count whole seconds: a 2 s token lives at least 1 s, so its first use is in time.
    emulator.settings(admin_token_lifetime=2)
    token = emulator.token(emulator.admin_grant()).json()["access_token"]
    assert emulator.digdir("GET", "/clients", token=token).status == 200
    time.sleep(2.1)
    dd_error(emulator.digdir("GET", "/clients", token=token), 401)


# ---------------------------------------------------------------------------
# DigDir: clients


def test_client_create_and_list(emulator):
    a = emulator.digdir("POST", "/clients", registration())
    b = emulator.digdir("POST", "/clients", registration(description="cluster:ns:other"))
    assert a.status == 201 and b.status == 201
    ca, cb = a.json(), b.json()
    assert UUID4.match(ca["client_id"]) and ca["client_orgno"] == ORG and ca["active"] is True
    assert ca["description"] == "cluster:ns:app" and ca["scopes"] == ["nav:test/api"]
    assert ISO_MS.match(ca["created"]) and ISO_MS.match(ca["last_updated"])
    assert ca["created"] < cb["created"]
    listed = emulator.digdir("GET", "/clients").json()
    assert sorted(c["client_id"] for c in listed) == sorted([ca["client_id"], cb["client_id"]])
    got = emulator.digdir("GET", "/clients/" + ca["client_id"]).json()
    assert got == ca


def test_other_orgs_clients_are_invisible(emulator):
    c = emulator.add_client(orgno=OTHER_ORG, scopes=["skatteetaten:testapi"])
    assert emulator.digdir("GET", "/clients").json() == []
    dd_error(emulator.digdir("GET", "/clients/" + c["client_id"]), 404)


@pytest.mark.parametrize("over,field", [
    ({"scopes": []}, "scopes"),
    ({"scopes": None}, "scopes"),
    ({"scopes": ["folkeregister:deling/offentligutenhjemmel"]}, "scopes"),
    ({"scopes": ["no:such/scope"]}, "scopes"),
    ({"integration_type": "bogus"}, "integration_type"),
    ({"token_endpoint_auth_method": "client_secret_basic"}, "token_endpoint_auth_method"),
    ({"grant_types": ["authorization_code"]}, "grant_types"),
    ({"description": ""}, "description"),
])
def test_client_validation(emulator, over, field):
    body = dd_error(emulator.digdir("POST", "/clients", registration(**over)), 400)
    assert any(e["fieldIdentifier"] == field for e in body["errors"]), body
    assert emulator.clients() == []


def test_inaccessible_scope_names_org(emulator):
    body = dd_error(emulator.digdir("POST", "/clients",
                                    registration(scopes=["folkeregister:deling/offentligutenhjemmel"])), 400)
    assert ORG in body["error_description"] and "folkeregister:deling/offentligutenhjemmel" in body["error_description"]


def test_client_update(emulator):
    c = emulator.digdir("POST", "/clients", registration()).json()
    r = emulator.digdir("PUT", "/clients/" + c["client_id"], registration(scopes=["nav:test/api", "ks:fiks"]))
    assert r.status == 200
    u = r.json()
    assert u["scopes"] == ["nav:test/api", "ks:fiks"] and u["created"] == c["created"]
    assert u["last_updated"] > c["last_updated"] and u["client_id"] == c["client_id"]
    dd_error(emulator.digdir("PUT", "/clients/" + c["client_id"], registration(scopes=[])), 400)
    dd_error(emulator.digdir("PUT", "/clients/00000000-0000-4000-8000-000000000000", registration()), 404)


def test_integration_type_immutable(emulator):
    c = emulator.digdir("POST", "/clients", registration()).json()
    body = dd_error(emulator.digdir("PUT", "/clients/" + c["client_id"], registration(integration_type="api_klient")), 400)
    assert "integration_type" in body["error_description"]
    assert emulator.client(c["client_id"])["integration_type"] == "maskinporten"


def test_delete_deactivates(emulator, keys):
    c = emulator.digdir("POST", "/clients", registration()).json()
    cid = c["client_id"]
    assert emulator.digdir("POST", "/clients/%s/jwks" % cid, {"keys": [public_jwk(keys[0])]}).status == 201
    assert emulator.token(client_grant(emulator, keys[0], cid, "nav:test/api")).status == 200
    assert emulator.digdir("DELETE", "/clients/" + cid).status == 200
    assert emulator.digdir("GET", "/clients").json() == []
    inactive = emulator.digdir("GET", "/clients?inactive=true").json()
    assert [x["client_id"] for x in inactive] == [cid] and inactive[0]["active"] is False
    dd_error(emulator.digdir("GET", "/clients/" + cid), 404)
    dd_error(emulator.digdir("GET", "/clients/%s/jwks" % cid), 404)
    mp_error(emulator.token(client_grant(emulator, keys[0], cid, "nav:test/api")), "invalid_grant", "MP-100")
    dumped = emulator.clients(inactive=True)
    assert emulator.clients() == [] and dumped[0]["active"] is False
    assert [k["kid"] for k in dumped[0]["keys"]] == ["key-0"] and dumped[0]["orgno"] == ORG


# ---------------------------------------------------------------------------
# DigDir: JWKS


def jwks_url(cid):
    return "/clients/%s/jwks" % cid


def test_jwks_replace_semantics(emulator, app, keys):
    r = emulator.digdir("GET", jwks_url(app))
    assert [k["kid"] for k in r.json()["keys"]] == ["key-0"]
    r = emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[1]), public_jwk(keys[2])]})
    assert r.status == 201
    body = r.json()
    assert [k["kid"] for k in body["keys"]] == ["key-1", "key-2"]
    assert ISO_MS.match(body["created"]) and ISO_MS.match(body["last_updated"])
    for k in body["keys"]:
        assert set(k) == {"kty", "e", "use", "kid", "alg", "n", "exp"}
    got = emulator.digdir("GET", jwks_url(app)).json()
    assert [k["kid"] for k in got["keys"]] == ["key-1", "key-2"]
    # key-0 is gone from the set, so it no longer works at /token.
    mp_error(emulator.token(client_grant(emulator, keys[0], app, "nav:test/api")), "invalid_grant",
             text="Unknown key identifier")
    assert emulator.token(client_grant(emulator, keys[2], app, "nav:test/api")).status == 200
    r = emulator.digdir("PUT", jwks_url(app), {"keys": [public_jwk(keys[3])]})
    assert r.status == 200 and [k["kid"] for k in r.json()["keys"]] == ["key-3"]
    assert emulator.digdir("DELETE", jwks_url(app)).status == 200
    assert emulator.digdir("GET", jwks_url(app)).json()["keys"] == []


def test_jwks_at_most_five(emulator, app, keys):
    assert emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(k) for k in keys[:5]]}).status == 201
    dd_error(emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(k) for k in keys[:6]]}), 400)
    assert len(emulator.digdir("GET", jwks_url(app)).json()["keys"]) == 5


def without(d, member):
    d = dict(d)
    del d[member]
    return d


@pytest.mark.parametrize("make", [
    lambda k: [without(public_jwk(k[1]), "use")],
    lambda k: [without(public_jwk(k[1]), "alg")],
    lambda k: [without(public_jwk(k[1]), "n")],
    lambda k: [public_jwk(k[1], kid="bad kid!")],
    lambda k: [public_jwk(k[1], kid="dup"), public_jwk(k[2], kid="dup")],
    lambda k: [json.loads(k[1].export_private())],
    lambda k: [public_jwk(k[1], exp=int(time.time()) - 60)],
    lambda k: [public_jwk(k[1], kty="EC")],
    lambda k: [public_jwk(k[1], use="enc")],
    lambda k: [without(public_jwk(k[1]), "kty")],
    lambda k: [without(public_jwk(k[1]), "kid")],
    lambda k: [without(public_jwk(k[1]), "e")],
    lambda k: [public_jwk(k[1], x5t="AAAA")],
    lambda k: [public_jwk(k[1], x5c="MIIB")],
    lambda k: [public_jwk(k[1], exp="soon")],
    lambda k: [public_jwk(k[1]), without(public_jwk(k[2]), "use")],
    lambda k: [],
], ids=["missing-use", "missing-alg", "missing-n", "bad-kid", "duplicate-kid", "private-members", "exp-past", "kty",
        "use-enc", "missing-kty", "missing-kid", "missing-e", "unknown-member", "x5c-not-a-list", "exp-not-int",
        "one-of-two-lacks-use", "empty-set"])
def test_jwks_rejected(emulator, app, keys, make):
    dd_error(emulator.digdir("POST", jwks_url(app), {"keys": make(keys)}), 400)
    assert [k["kid"] for k in emulator.digdir("GET", jwks_url(app)).json()["keys"]] == ["key-0"]


def test_jwks_exp_default_and_limit(emulator, app, keys):
    year = 365 * 24 * 3600
    now = int(time.time())
    body = {"keys": [public_jwk(keys[1]), public_jwk(keys[3], exp=now + 3600)]}
    got = {k["kid"]: k["exp"] for k in emulator.digdir("POST", jwks_url(app), body).json()["keys"]}
    assert abs(got["key-1"] - (now + year)) <= 5
    assert got["key-3"] == now + 3600
    # A key lives at most a year from its upload: a longer exp is refused, not capped.
    r = emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[2], exp=now + year + 60)]})
    assert "one year" in dd_error(r, 400)["error_description"]
    assert emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[2], exp=now + year - 60)]}).status == 201


# ---------------------------------------------------------------------------
# DigDir: scopes and access


def new_scope(subscope, prefix="test", **extra):
    """A POST /scopes body with everything DigDir requires."""
    return dict({"prefix": prefix, "subscope": subscope, "description": "test scope"}, **extra)


def test_scope_lifecycle(emulator):
    r = emulator.digdir("POST", "/scopes", {"prefix": "test", "subscope": "arbeid:api.read", "description": "d",
                                            "active": True, "name": ""})
    assert r.status == 201, r
    s = r.json()
    assert s["name"] == "test:arbeid:api.read" and s["owner_orgno"] == ORG and s["active"] is True
    q = "?scope=test:arbeid:api.read"
    dd_error(emulator.digdir("POST", "/scopes", new_scope("arbeid:api.read")), 400)
    assert [x["name"] for x in emulator.digdir("GET", "/scopes").json()] == ["test:arbeid:api.read"]
    assert emulator.digdir("GET", "/scopes" + q).json()["name"] == "test:arbeid:api.read"
    r = emulator.digdir("PUT", "/scopes" + q, {"prefix": "test", "subscope": "arbeid:api.read", "description": "new"})
    assert r.status == 200 and r.json()["description"] == "new"
    assert emulator.digdir("DELETE", "/scopes" + q).json()["active"] is False
    assert emulator.digdir("GET", "/scopes").json() == []
    assert emulator.digdir("GET", "/scopes?inactive=true").json()[0]["active"] is False
    dd_error(emulator.digdir("POST", "/scopes", new_scope("arbeid:api.read")), 409)
    r = emulator.digdir("PUT", "/scopes" + q, {"active": True})
    assert r.status == 200 and r.json()["active"] is True
    assert len(emulator.digdir("GET", "/scopes").json()) == 1


def test_scope_prefix_is_required_and_assigned(emulator):
    # Missing, empty or not the organisation's: 400 with DigDir's error body naming the field.
    for body, why in (({"subscope": "x", "description": "d"}, "prefix: is required"),
                      (new_scope("x", prefix=""), "prefix: is required"),
                      (new_scope("x", prefix=None), "prefix: is required"),
                      (new_scope("x", prefix="nav"), "prefix: prefix nav is not assigned to organisation " + ORG)):
        err = dd_error(emulator.digdir("POST", "/scopes", body), 400)
        assert [(e["fieldIdentifier"], e["errorMessage"]) for e in err["errors"]] == [("prefix", why)], err
    assert emulator.digdir("GET", "/scopes").json() == []
    # An organisation may hold several prefixes, set through the control API.
    emulator.settings(org_prefixes=["myorg", "other"])
    assert emulator.digdir("POST", "/scopes", new_scope("x", prefix="myorg")).json()["name"] == "myorg:x"
    assert emulator.digdir("POST", "/scopes", new_scope("x", prefix="other")).json()["name"] == "other:x"
    dd_error(emulator.digdir("POST", "/scopes", new_scope("y", prefix="test")), 400)
    dd_error(emulator.digdir("POST", "/scopes", new_scope("Bad Scope", prefix="myorg")), 400)
    assert sorted(x["name"] for x in emulator.digdir("GET", "/scopes").json()) == ["myorg:x", "other:x"]
    # An organisation with no prefix exposes nothing.
    emulator.settings(org_prefixes=[])
    dd_error(emulator.digdir("POST", "/scopes", new_scope("z", prefix="myorg")), 400)


def test_scope_needs_description_and_derives_name(emulator):
    err = dd_error(emulator.digdir("POST", "/scopes", {"prefix": "test", "subscope": "x"}), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["description"]
    dd_error(emulator.digdir("POST", "/scopes", new_scope("x", name="test:y")), 400)
    assert emulator.digdir("POST", "/scopes", new_scope("x", name="test:x")).status == 201


def test_only_owner_changes_scope(emulator):
    dd_error(emulator.digdir("PUT", "/scopes?scope=nav:test/api", {"description": "mine"}), 403)
    dd_error(emulator.digdir("DELETE", "/scopes?scope=nav:test/api"), 403)
    dd_error(emulator.digdir("PUT", "/scopes/access/%s?scope=nav:test/api" % OTHER_ORG), 403)
    dd_error(emulator.digdir("DELETE", "/scopes?scope=no:such"), 404)


def test_access_grant_and_revoke(emulator):
    assert emulator.digdir("POST", "/scopes", new_scope("api")).status == 201
    q = "?scope=test:api"
    r = emulator.digdir("PUT", "/scopes/access/%s%s" % (OTHER_ORG, q))
    assert r.status == 200 and r.json()["state"] == "APPROVED" and r.json()["consumer_orgno"] == OTHER_ORG
    acl = emulator.digdir("GET", "/scopes/access" + q).json()
    assert [(a["consumer_orgno"], a["state"]) for a in acl] == [(OTHER_ORG, "APPROVED")]
    assert emulator.digdir("DELETE", "/scopes/access/%s%s" % (OTHER_ORG, q)).json()["state"] == "DENIED"
    acl = emulator.digdir("GET", "/scopes/access" + q).json()
    assert [(a["consumer_orgno"], a["state"]) for a in acl] == [(OTHER_ORG, "DENIED")]
    assert emulator.digdir("PUT", "/scopes/access/%s%s" % (OTHER_ORG, q)).json()["state"] == "APPROVED"
    dd_error(emulator.digdir("PUT", "/scopes/access/12345%s" % q), 400)
    dd_error(emulator.digdir("PUT", "/scopes/access/123456789%s" % q), 400)  # bad check digit


def test_access_all_and_open_scopes(emulator):
    mine = emulator.digdir("GET", "/scopes/access/all").json()
    assert sorted((a["scope"], a["state"]) for a in mine) == [("nav:test/api", "APPROVED"),
                                                              ("skatteetaten:testapi", "APPROVED")]
    for a in mine:
        assert set(a) >= {"consumer_orgno", "owner_orgno", "scope", "state", "created", "last_updated"}
        assert a["consumer_orgno"] == ORG
    open_scopes = emulator.digdir("GET", "/scopes/all?accessible_for_all=true").json()
    assert [s["name"] for s in open_scopes] == ["ks:fiks"]


def test_own_scope_is_consumable(emulator, keys):
    assert emulator.digdir("POST", "/scopes", new_scope("own")).status == 201
    c = emulator.digdir("POST", "/clients", registration(scopes=["test:own"])).json()
    emulator.digdir("POST", jwks_url(c["client_id"]), {"keys": [public_jwk(keys[0])]})
    assert emulator.token(client_grant(emulator, keys[0], c["client_id"], "test:own")).status == 200
    emulator.digdir("DELETE", "/scopes?scope=test:own")
    mp_error(emulator.token(client_grant(emulator, keys[0], c["client_id"], "test:own")), "forbidden", "MP-250", 403)


# ---------------------------------------------------------------------------
# The admin client: its scopes, its token, what each endpoint needs


def test_admin_scopes_set_by_control(emulator):
    r = emulator.token(emulator.admin_grant(scope="idporten:dcr.read idporten:dcr.modify"))
    assert r.status == 200, r
    assert r.json()["scope"] == "idporten:dcr.read idporten:dcr.modify"
    assert decode_jwt(r.json()["access_token"])[1]["scope"] == "idporten:dcr.read idporten:dcr.modify"
    emulator.settings(admin_scopes=["idporten:dcr.read", "idporten:dcr.write"])
    body = mp_error(emulator.token(emulator.admin_grant(scope="idporten:dcr.read idporten:scopes.write")),
                    "invalid_scope", "MP-200", text="invalid scopes for client")
    assert body["error_description"].startswith("Token request contains invalid scopes for client, idporten:scopes.write ")
    r = emulator.token(emulator.admin_grant(scope="idporten:dcr.write idporten:dcr.read"))
    assert r.status == 200 and r.json()["scope"] == "idporten:dcr.write idporten:dcr.read"
    # The control API's own admin token follows the same setting.
    assert decode_jwt(emulator.admin_token())[1]["scope"] == "idporten:dcr.read idporten:dcr.write"
    assert emulator.request("GET", "/_emulator/admin-token?scope=idporten:scopes.write").status == 400


def test_org_comes_from_consumer_claim(emulator):
    emulator.add_client(description="mine")
    emulator.add_client(orgno=OTHER_ORG, description="theirs")
    token = emulator.token(emulator.admin_grant()).json()["access_token"]
    claims = decode_jwt(token)[1]
    assert "client_orgno" not in claims and claims["consumer"] == {"authority": "iso6523-actorid-upis",
                                                                   "ID": "0192:" + ORG}
    listed = emulator.digdir("GET", "/clients", token=token).json()
    assert [(c["description"], c["client_orgno"]) for c in listed] == [("mine", ORG)]


def _endpoint_cases(keys):
    jwks = {"keys": [public_jwk(keys[1])]}
    own = "?scope=test:own"
    return [
        ("GET", "/clients", None, {"idporten:dcr.read"}),
        ("POST", "/clients", registration(), {"idporten:dcr.write"}),
        ("GET", "/clients/{cid}", None, {"idporten:dcr.read"}),
        ("PUT", "/clients/{cid}", registration(), {"idporten:dcr.modify", "idporten:dcr.write"}),
        ("DELETE", "/clients/{cid}", None, {"idporten:dcr.write"}),
        ("GET", "/clients/{cid}/jwks", None, {"idporten:dcr.read"}),
        ("POST", "/clients/{cid}/jwks", jwks, {"idporten:dcr.write"}),
        ("PUT", "/clients/{cid}/jwks", jwks, {"idporten:dcr.write"}),
        ("DELETE", "/clients/{cid}/jwks", None, {"idporten:dcr.write"}),
        ("GET", "/scopes/access/all", None, {"idporten:dcr.read"}),
        ("GET", "/scopes", None, {"idporten:scopes.write"}),
        ("GET", "/scopes" + own, None, {"idporten:scopes.write"}),
        ("POST", "/scopes", new_scope("fresh"), {"idporten:scopes.write"}),
        ("PUT", "/scopes" + own, {"description": "new"}, {"idporten:scopes.write"}),
        ("DELETE", "/scopes" + own, None, {"idporten:scopes.write"}),
        ("GET", "/scopes/access" + own, None, {"idporten:scopes.write"}),
        ("PUT", "/scopes/access/%s%s" % (THIRD_ORG, own), None, {"idporten:scopes.write"}),
        ("DELETE", "/scopes/access/%s%s" % (OTHER_ORG, own), None, {"idporten:scopes.write"}),
    ]


def test_each_endpoint_needs_its_admin_scope(emulator, keys):
    for method, path, body, enough in _endpoint_cases(keys):
        for scope in ADMIN_SCOPES:
            emulator.reset()
            cid = emulator.add_client(description="cluster:ns:app", scopes=[SCOPE],
                                      jwks=[public_jwk(keys[0])])["client_id"]
            emulator.seed_scope("test:own", ORG, consumers=[OTHER_ORG])
            r = emulator.digdir(method, path.format(cid=cid), body, token=emulator.admin_token(scope))
            if scope in enough:
                assert r.status in (200, 201), (method, path, scope, r)
            else:
                assert dd_error(r, 403, "needs one of the scopes"), (method, path, scope)


def test_open_endpoints_need_no_token(emulator):
    r = emulator.request("GET", "/api/v1/scopes/all")
    assert r.status == 200 and "ks:fiks" in [s["name"] for s in r.json()]
    assert emulator.request("GET", "/api/v1/scopes/all?accessible_for_all=true").json()[0]["name"] == "ks:fiks"
    assert emulator.request("GET", "/api/v1/delegationsources").status == 200


# ---------------------------------------------------------------------------
# Control-API settings


@pytest.mark.parametrize("bad", [
    {"propagation_delay": -1}, {"propagation_delay": 120.5}, {"propagation_delay": "5"},
    {"propagation_delay": True}, {"org_prefixes": ["Bad:"]}, {"org_prefixes": 7},
    {"refused_consumers": ["12345"]}, {"admin_scopes": [""]}, {"admin_token_lifetime": 0},
    {"client_token_lifetime": "x"}, {"revoke_admin": "yes"}, {"owner_needs_grant": 1}, {"no_such": 1},
    {"org_prefix": "a", "org_prefixes": ["b"]},
])
def test_settings_are_validated(emulator, bad):
    before = emulator.control("GET", "/settings")
    r = emulator.request("POST", "/_emulator/settings", json_body=dict(bad, admin_token_lifetime=7)
                         if "admin_token_lifetime" not in bad else bad)
    assert r.status == 400, r
    assert emulator.control("GET", "/settings") == before


def test_propagation_delay_bounds(emulator, tmp_path):
    assert emulator.settings(propagation_delay=0)["propagation_delay"] == 0
    assert emulator.settings(propagation_delay=120)["propagation_delay"] == 120
    p = subprocess.run([PYTHON, EMULATOR, "--state-dir", str(tmp_path), "--propagation-delay", "121"],
                       capture_output=True, timeout=30)
    assert p.returncode != 0 and b"propagation_delay" in p.stderr


# ---------------------------------------------------------------------------
# Propagation delay: Maskinporten learns new clients and keys late


def grant_at(emu, key, cid, offset, scope=SCOPE):
    """A grant dated by the emulator's clock, which runs clock_offset seconds ahead of ours."""
    now = int(time.time() + offset)
    return client_grant(emu, key, cid, scope, iat=now, exp=now + 30)


def test_propagation_delay(emulator, keys):
    emulator.settings(propagation_delay=60)
    cid = emulator.digdir("POST", "/clients", registration()).json()["client_id"]
    assert emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0])]}).status == 201
    mp_error(emulator.token(grant_at(emulator, keys[0], cid, 0)), "invalid_grant", "MP-100", text="Client not found")
    emulator.settings(clock_offset=55)
    mp_error(emulator.token(grant_at(emulator, keys[0], cid, 55)), "invalid_grant", text="Client not found")
    emulator.settings(clock_offset=61)
    assert emulator.token(grant_at(emulator, keys[0], cid, 61)).status == 200
    # A new kid waits out its own delay; the registered key keeps working meanwhile.
    assert emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0]), public_jwk(keys[1])]}).status == 201
    assert emulator.token(grant_at(emulator, keys[0], cid, 61)).status == 200
    mp_error(emulator.token(grant_at(emulator, keys[1], cid, 61)), "invalid_grant", text="Unknown key identifier")
    # Re-uploading unchanged keys restarts nothing: key-1 is still due at 61 + 60.
    emulator.settings(clock_offset=100)
    assert emulator.digdir("PUT", jwks_url(cid), {"keys": [public_jwk(keys[0]), public_jwk(keys[1])]}).status == 200
    assert emulator.token(grant_at(emulator, keys[0], cid, 100)).status == 200
    mp_error(emulator.token(grant_at(emulator, keys[1], cid, 100)), "invalid_grant", text="Unknown key identifier")
    emulator.settings(clock_offset=122)
    assert emulator.token(grant_at(emulator, keys[1], cid, 122)).status == 200
    # The same kid with other n/e is a new key.
    swapped = new_key(kid="key-1")
    assert emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0]), public_jwk(swapped)]}).status == 201
    mp_error(emulator.token(grant_at(emulator, swapped, cid, 122)), "invalid_grant", text="Unknown key identifier")
    emulator.settings(clock_offset=183)
    assert emulator.token(grant_at(emulator, swapped, cid, 183)).status == 200
    # A key dropped from the set stops at once; put back, it is new again.
    assert emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(swapped)]}).status == 201
    mp_error(emulator.token(grant_at(emulator, keys[0], cid, 183)), "invalid_grant", text="Unknown key identifier")
    assert emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0]), public_jwk(swapped)]}).status == 201
    mp_error(emulator.token(grant_at(emulator, keys[0], cid, 183)), "invalid_grant", text="Unknown key identifier")


def test_seeded_clients_are_known_at_once(emulator, keys):
    emulator.settings(propagation_delay=120)
    cid = emulator.add_client(scopes=[SCOPE], jwks=[public_jwk(keys[0])])["client_id"]
    assert emulator.token(client_grant(emulator, keys[0], cid, SCOPE)).status == 200


# ---------------------------------------------------------------------------
# Keys registered before the 2025-05-22 API change


def legacy(key, **extra):
    """A public JWK as DigDir stored it before 2025-05-22: no use."""
    d = without(public_jwk(key), "use")
    d.update(extra)
    return d


def test_legacy_keys_held_returned_and_usable(emulator, keys):
    exp = int(time.time()) + 3600
    seeded = [legacy(keys[0], exp=exp), legacy(keys[1])]
    cid = emulator.add_client(scopes=[SCOPE], jwks=seeded)["client_id"]
    got = emulator.digdir("GET", jwks_url(cid)).json()["keys"]
    assert got[0] == seeded[0]  # member for member, no use added
    assert {k: v for k, v in got[1].items() if k != "exp"} == seeded[1]
    assert abs(got[1]["exp"] - (int(time.time()) + YEAR)) <= 5  # DigDir gives every key an exp
    for key in keys[:2]:
        assert emulator.token(client_grant(emulator, key, cid, SCOPE)).status == 200
    # Posting them back as they are is refused, for every key that lacks use.
    err = dd_error(emulator.digdir("POST", jwks_url(cid), {"keys": got}), 400, "use is required")
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["keys[0]", "keys[1]"]
    dd_error(emulator.digdir("PUT", jwks_url(cid), {"keys": [dict(got[0], use="sig"), got[1]]}), 400)
    assert emulator.digdir("GET", jwks_url(cid)).json()["keys"] == got
    # Normalised (use added, exp kept), they go through and stay usable at once, delay or not.
    emulator.settings(propagation_delay=120)
    fixed = [dict(k, use="sig") for k in got]
    r = emulator.digdir("POST", jwks_url(cid), {"keys": fixed})
    assert r.status == 201 and r.json()["keys"] == fixed
    assert emulator.token(client_grant(emulator, keys[0], cid, SCOPE)).status == 200


def test_jwks_upload_keeps_x5c_and_exp(emulator, app, keys):
    exp = int(time.time()) + 7200
    key = public_jwk(keys[1], x5c=emulator.admin_chain_x5c()[:1], exp=exp)
    r = emulator.digdir("POST", jwks_url(app), {"keys": [key]})
    assert r.status == 201 and r.json()["keys"] == [key]


def test_kid_unique_across_clients(emulator, app, keys):
    other = emulator.add_client(scopes=[SCOPE])["client_id"]
    dd_error(emulator.digdir("POST", jwks_url(other), {"keys": [public_jwk(keys[0])]}), 400, "another client")
    r = emulator.request("POST", "/_emulator/clients", json_body={"jwks": [public_jwk(keys[0])]})
    assert r.status == 400
    # The owner may post it again; once dropped there, the kid is free.
    assert emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[0])]}).status == 201
    assert emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[1])]}).status == 201
    assert emulator.digdir("POST", jwks_url(other), {"keys": [public_jwk(keys[0])]}).status == 201


# ---------------------------------------------------------------------------
# PUT /clients/{id} replaces the registration


def test_put_resets_what_it_leaves_out(emulator):
    full = registration(access_token_lifetime=600, authorization_lifetime=900, refresh_token_lifetime=60,
                        sso_disabled=True, frontchannel_logout_session_required=True,
                        frontchannel_logout_uri="https://example.org/logout", code_challenge_method="S256",
                        redirect_uris=["https://example.org/cb"], post_logout_redirect_uris=["https://example.org/"])
    c = emulator.digdir("POST", "/clients", full).json()
    for k in ("access_token_lifetime", "sso_disabled", "frontchannel_logout_uri", "code_challenge_method", "client_uri"):
        assert c[k] == full[k]
    minimal = {k: full[k] for k in ("client_name", "description", "integration_type", "grant_types", "scopes")}
    u = emulator.digdir("PUT", "/clients/" + c["client_id"], minimal).json()
    assert (u["access_token_lifetime"], u["authorization_lifetime"], u["refresh_token_lifetime"]) == (0, 0, 0)
    assert u["sso_disabled"] is False and u["frontchannel_logout_session_required"] is False
    assert u["redirect_uris"] == [] and u["post_logout_redirect_uris"] == []
    assert u["application_type"] == "web" and u["token_endpoint_auth_method"] == "private_key_jwt"
    assert u["refresh_token_usage"] == "ONETIME"
    for k in ("client_uri", "frontchannel_logout_uri", "code_challenge_method"):
        assert k not in u
    assert u["created"] == c["created"] and u["client_orgno"] == ORG and u["active"] is True
    assert emulator.digdir("GET", "/clients/" + c["client_id"]).json() == u
    assert emulator.digdir("GET", "/clients").json() == [u]


@pytest.mark.parametrize("field", ["client_id", "client_orgno", "created", "created_date", "last_updated", "active"])
def test_read_only_fields_refused(emulator, field):
    c = emulator.digdir("POST", "/clients", registration()).json()
    value = c.get(field, "2021-09-15T10:20:43.354+02:00")
    err = dd_error(emulator.digdir("PUT", "/clients/" + c["client_id"], dict(registration(description="x:y:z"),
                                                                           **{field: value})), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == [field]
    assert emulator.digdir("GET", "/clients/" + c["client_id"]).json() == c
    dd_error(emulator.digdir("POST", "/clients", dict(registration(), **{field: value})), 400)
    assert len(emulator.clients()) == 1


def test_get_modify_put(emulator):
    made = emulator.add_client(description="cluster:ns:app", client_name="by hand", scopes=[SCOPE],
                               access_token_lifetime=300, client_uri="https://hand.example", sso_disabled=True)
    got = emulator.digdir("GET", "/clients/" + made["client_id"]).json()
    body = {k: v for k, v in got.items() if k not in ("client_id", "client_orgno", "created", "last_updated", "active")}
    body["scopes"] = [SCOPE, "ks:fiks"]
    u = emulator.digdir("PUT", "/clients/" + got["client_id"], body).json()
    assert u == dict(got, scopes=[SCOPE, "ks:fiks"], last_updated=u["last_updated"])
    assert u["last_updated"] > got["last_updated"]
    err = dd_error(emulator.digdir("PUT", "/clients/" + got["client_id"], dict(body, jwks_uri="/x")), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["jwks_uri"]
    r = emulator.request("POST", "/_emulator/clients", json_body={"no_such_field": 1})
    assert r.status == 400


# ---------------------------------------------------------------------------
# at_max_age


@pytest.mark.parametrize("value", [-1, "3600", 3600.5, True, None, 2**31])
def test_at_max_age_refused(emulator, value):
    err = dd_error(emulator.digdir("POST", "/scopes", new_scope("x", at_max_age=value)), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["at_max_age"]
    assert emulator.digdir("POST", "/scopes", new_scope("y")).status == 201
    err = dd_error(emulator.digdir("PUT", "/scopes?scope=test:y", {"at_max_age": value}), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["at_max_age"]
    assert emulator.digdir("GET", "/scopes?scope=test:y").json()["at_max_age"] == 0


def test_at_max_age_bounds_and_token_cap(emulator, keys):
    for i, v in enumerate((0, 1, 3600, 2**31 - 1)):
        assert emulator.digdir("POST", "/scopes", new_scope("ok%d" % i, at_max_age=v)).json()["at_max_age"] == v
    emulator.digdir("POST", "/scopes", new_scope("short", at_max_age=30))
    emulator.digdir("POST", "/scopes", new_scope("long", at_max_age=3600))
    emulator.digdir("POST", "/scopes", new_scope("nocap"))
    cid = emulator.digdir("POST", "/clients", registration(access_token_lifetime=600, scopes=[
        "test:short", "test:long", "test:nocap"])).json()["client_id"]
    emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0])]})

    def expires_in(scope):
        r = emulator.token(client_grant(emulator, keys[0], cid, scope))
        assert r.status == 200, r
        return r.json()["expires_in"]

    assert expires_in("test:long") == 600
    assert expires_in("test:nocap") == 600
    assert expires_in("test:short test:long") == 30


def test_owner_needs_grant_setting(emulator, keys):
    emulator.digdir("POST", "/scopes", new_scope("own"))
    cid = emulator.digdir("POST", "/clients", registration(scopes=["test:own"])).json()["client_id"]
    emulator.digdir("POST", jwks_url(cid), {"keys": [public_jwk(keys[0])]})
    assert emulator.token(client_grant(emulator, keys[0], cid, "test:own")).status == 200
    emulator.settings(owner_needs_grant=True)
    mp_error(emulator.token(client_grant(emulator, keys[0], cid, "test:own")), "forbidden", "MP-250", 403)
    assert emulator.digdir("PUT", "/scopes/access/%s?scope=test:own" % ORG).status == 200
    assert emulator.token(client_grant(emulator, keys[0], cid, "test:own")).status == 200


# ---------------------------------------------------------------------------
# A consumer DigDir refuses; listings of thousands of clients


def test_refused_consumer(emulator):
    emulator.digdir("POST", "/scopes", new_scope("api"))
    emulator.settings(refused_consumers=[OTHER_ORG])
    err = dd_error(emulator.digdir("PUT", "/scopes/access/%s?scope=test:api" % OTHER_ORG), 400)
    assert [e["fieldIdentifier"] for e in err["errors"]] == ["consumer_orgno"] and OTHER_ORG in err["error"]
    assert emulator.digdir("PUT", "/scopes/access/%s?scope=test:api" % THIRD_ORG).status == 200
    acl = emulator.digdir("GET", "/scopes/access?scope=test:api").json()
    assert [a["consumer_orgno"] for a in acl] == [THIRD_ORG]


def test_listing_ten_thousand_clients(emulator):
    t0 = time.monotonic()
    ids = emulator.bulk_clients(10000, description="bulk:ns:app-{i}", scopes=[SCOPE])
    seeded = time.monotonic() - t0
    assert len(set(ids)) == 10000
    emulator.add_client(orgno=OTHER_ORG, description="theirs")
    token = emulator.admin_token()
    t0 = time.monotonic()
    r = emulator.request("GET", "/api/v1/clients", token=token, timeout=60)
    listed = time.monotonic() - t0
    assert r.status == 200
    clients = r.json()
    assert len(clients) == 10000
    assert {c["description"] for c in clients} == {"bulk:ns:app-%d" % i for i in range(10000)}
    assert all(c["client_orgno"] == ORG and c["active"] and c["scopes"] == [SCOPE] for c in clients)
    print("\nbulk seed 10000 clients: %.2f s; GET /api/v1/clients: %.3f s, %d bytes" % (seeded, listed, len(r.body)))
    # Generous bounds (measured well under a second each): they catch a per-client cost gone quadratic.
    assert seeded < 60 and listed < 10
    # A change to one client shows in the next listing.
    u = emulator.digdir("PUT", "/clients/" + ids[7], registration(description="renamed")).json()
    assert [c for c in emulator.digdir("GET", "/clients", token=token).json() if c["client_id"] == ids[7]] == [u]
    emulator.digdir("DELETE", "/clients/" + ids[8], token=token)
    assert len(emulator.digdir("GET", "/clients", token=token).json()) == 9999


def test_bulk_is_validated(emulator):
    for body in ({"count": 0, "description": "a-{i}"}, {"count": 2, "description": "no-template"},
                 {"count": 2, "description": "a-{i}", "bogus": 1}, {"description": "a-{i}"}):
        assert emulator.request("POST", "/_emulator/clients/bulk", json_body=body).status == 400
    assert emulator.clients() == []


# ---------------------------------------------------------------------------
# Faults, counts, log, reset


def test_fault_status_retry_after_and_count(emulator):
    emulator.fault(method="GET", path="^/api/v1/clients$", status=429, retry_after=3, count=2)
    for _ in range(2):
        r = emulator.digdir("GET", "/clients")
        dd_error(r, 429)
        assert r.headers["retry-after"] == "3"
    assert emulator.digdir("GET", "/clients").status == 200


def test_fault_custom_body_and_method_filter(emulator):
    emulator.fault(method="POST", path="/token", status=503, body="busy", content_type="text/plain")
    assert emulator.request("GET", "/jwk").status == 200
    r = emulator.token(emulator.admin_grant())
    assert r.status == 503 and r.body == b"busy" and r.headers["content-type"] == "text/plain"


def test_fault_delay(emulator):
    emulator.fault(path="^/jwk$", delay=0.4, count=1)
    t = time.monotonic()
    assert emulator.request("GET", "/jwk").status == 200
    assert time.monotonic() - t >= 0.4
    t = time.monotonic()
    emulator.request("GET", "/jwk")
    assert time.monotonic() - t < 0.4


def test_fault_drop(emulator):
    emulator.fault(path="^/jwk$", drop=True, count=1)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        emulator.request("GET", "/jwk")
    assert emulator.request("GET", "/jwk").status == 200
    assert [e["status"] for e in emulator.log()] == [0, 200]


def test_fault_malformed(emulator):
    emulator.fault(path="^/api/v1/clients$", malformed=True)
    r = emulator.digdir("POST", "/clients", registration())
    assert r.status == 201
    with pytest.raises(ValueError):
        r.json()
    assert len(emulator.clients()) == 1  # processed; only the answer is broken


def test_fault_truncate(emulator):
    emulator.fault(path="well-known", truncate=True)
    with pytest.raises(http.client.IncompleteRead):
        emulator.request("GET", "/.well-known/oauth-authorization-server")


def test_fault_content_type(emulator):
    emulator.fault(path="well-known", content_type="text/html")
    r = emulator.request("GET", "/.well-known/oauth-authorization-server")
    assert r.status == 200 and r.headers["content-type"] == "text/html"


def test_fault_fraction_and_clear(emulator):
    emulator.fault(path="^/jwk$", status=500, fraction=0.0)
    assert all(emulator.request("GET", "/jwk").status == 200 for _ in range(5))
    emulator.fault(path=".", status=500)
    assert emulator.request("GET", "/jwk").status == 500
    assert emulator.counts()["GET /jwk"] == 6  # control API is never faulted or counted
    emulator.clear_faults()
    assert emulator.request("GET", "/jwk").status == 200


def test_counts_are_templated(emulator, app, keys):
    emulator.digdir("GET", "/clients")
    emulator.digdir("GET", jwks_url(app))
    emulator.digdir("POST", jwks_url(app), {"keys": [public_jwk(keys[0])]})
    emulator.digdir("PUT", "/clients/" + app, registration())
    emulator.digdir("PUT", "/scopes/access/%s?scope=x:y" % OTHER_ORG)
    emulator.token(client_grant(emulator, keys[0], app, "nav:test/api"))
    counts = emulator.counts()
    assert counts["GET /api/v1/clients"] == 1
    assert counts["GET /api/v1/clients/{id}/jwks"] == 1
    assert counts["POST /api/v1/clients/{id}/jwks"] == 1
    assert counts["PUT /api/v1/clients/{id}"] == 1
    assert counts["PUT /api/v1/scopes/access/{orgno}"] == 1
    assert counts["POST /token"] == 1 and counts["token:client"] == 1
    assert "token:admin" not in counts and counts["control:admin-token"] == 5


def test_bytes_are_counted_per_route(emulator, app):
    """The benchmarks' cost figures: body bytes sent per templated route."""
    r = emulator.digdir("GET", "/clients")
    r2 = emulator.digdir("GET", "/clients/" + app)
    sent = emulator.bytes_sent()
    assert sent["GET /api/v1/clients"] == len(r.body)
    assert sent["GET /api/v1/clients/{id}"] == len(r2.body)
    emulator.reset()
    assert emulator.bytes_sent() == {}


def test_log_has_no_bodies(emulator, app, keys):
    emulator.token(client_grant(emulator, keys[0], app, "nav:test/api"))
    emulator.request("GET", "/api/v1/clients")
    log = emulator.log()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [("POST", "/token", 200),
                                                                    ("GET", "/api/v1/clients", 401)]
    assert all(set(e) == {"method", "path", "status", "time", "start"} for e in log)


def test_reset(emulator, app, keys):
    emulator.fault(path="^/jwk$", status=500)
    emulator.settings(admin_token_lifetime=5, org_prefix="x", propagation_delay=9, refused_consumers=[OTHER_ORG],
                      admin_scopes=["idporten:dcr.read"])
    assert emulator.control("GET", "/settings")["org_prefixes"] == ["x"]
    emulator.seed_scope("extra:scope", OTHER_ORG, accessible_for_all=True)
    emulator.reset()
    assert emulator.clients(inactive=True) == []
    assert emulator.counts() == {}
    assert emulator.request("GET", "/jwk").status == 200
    assert emulator.token(emulator.admin_grant()).json()["expires_in"] == 3600
    settings = emulator.control("GET", "/settings")
    assert settings["org_prefixes"] == ["test"] and settings["propagation_delay"] == 0
    assert settings["refused_consumers"] == [] and len(settings["admin_scopes"]) == 4
    names = [s["name"] for s in emulator.digdir("GET", "/scopes/all").json()]
    assert sorted(names) == ["folkeregister:deling/offentligutenhjemmel", "ks:fiks", "nav:test/api",
                             "skatteetaten:testapi"]
