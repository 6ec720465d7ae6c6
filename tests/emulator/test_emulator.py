"""The emulator enforces what Maskinporten and DigDir enforce (see
/work/shared/reference/digdir-maskinporten-api.md). Each test drives the real
emulator process over HTTPS."""

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
    assert claims["client_orgno"] == ORG
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


def test_propagation_delay(emulator, keys):
    emulator.settings(propagation_delay=0.6)
    cid = emulator.digdir("POST", "/clients", registration()).json()["client_id"]
    assert emulator.digdir("POST", "/clients/%s/jwks" % cid, {"keys": [public_jwk(keys[0])]}).status < 300
    mp_error(emulator.token(client_grant(emulator, keys[0], cid, "nav:test/api")), "invalid_grant", "MP-100",
             text="Client not found")
    time.sleep(0.7)
    assert emulator.token(client_grant(emulator, keys[0], cid, "nav:test/api")).status == 200
    # A key added later is not known yet; re-posting a known key keeps it working.
    jwks = {"keys": [public_jwk(keys[0]), public_jwk(keys[1])]}
    assert emulator.digdir("POST", "/clients/%s/jwks" % cid, jwks).status < 300
    assert emulator.token(client_grant(emulator, keys[0], cid, "nav:test/api")).status == 200
    mp_error(emulator.token(client_grant(emulator, keys[1], cid, "nav:test/api")), "invalid_grant",
             text="Unknown key identifier")
    time.sleep(0.7)
    assert emulator.token(client_grant(emulator, keys[1], cid, "nav:test/api")).status == 200


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
    emulator.settings(admin_token_lifetime=1)
    token = emulator.token(emulator.admin_grant()).json()["access_token"]
    assert emulator.digdir("GET", "/clients", token=token).status == 200
    time.sleep(1.1)
    dd_error(emulator.digdir("GET", "/clients", token=token), 401)


def test_digdir_token_scopes(emulator):
    read = emulator.token(emulator.admin_grant(scope="idporten:dcr.read")).json()["access_token"]
    assert emulator.digdir("GET", "/clients", token=read).status == 200
    dd_error(emulator.digdir("POST", "/clients", registration(), token=read), 403)
    dd_error(emulator.digdir("POST", "/scopes", {"subscope": "x"}, token=read), 403)
    write = emulator.token(emulator.admin_grant(scope="idporten:dcr.write")).json()["access_token"]
    assert emulator.digdir("POST", "/clients", registration(), token=write).status == 201
    dd_error(emulator.digdir("GET", "/clients", token=write), 403)
    modify = emulator.token(emulator.admin_grant(scope="idporten:dcr.modify")).json()["access_token"]
    cid = emulator.clients()[0]["client_id"]
    assert emulator.digdir("PUT", "/clients/" + cid, registration(), token=modify).status == 200
    swrite = emulator.token(emulator.admin_grant(scope="idporten:scopes.write")).json()["access_token"]
    assert emulator.digdir("POST", "/scopes", {"subscope": "x"}, token=swrite).status == 201


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
], ids=["missing-use", "missing-alg", "missing-n", "bad-kid", "duplicate-kid", "private-members", "exp-past", "kty"])
def test_jwks_rejected(emulator, app, keys, make):
    dd_error(emulator.digdir("POST", jwks_url(app), {"keys": make(keys)}), 400)
    assert [k["kid"] for k in emulator.digdir("GET", jwks_url(app)).json()["keys"]] == ["key-0"]


def test_jwks_exp_default_and_cap(emulator, app, keys):
    year = 365 * 24 * 3600
    now = int(time.time())
    body = {"keys": [public_jwk(keys[1]), public_jwk(keys[2], exp=now + 2 * year), public_jwk(keys[3], exp=now + 3600)]}
    got = {k["kid"]: k["exp"] for k in emulator.digdir("POST", jwks_url(app), body).json()["keys"]}
    assert abs(got["key-1"] - (now + year)) <= 5
    assert abs(got["key-2"] - (now + year)) <= 5
    assert got["key-3"] == now + 3600


# ---------------------------------------------------------------------------
# DigDir: scopes and access


def test_scope_lifecycle(emulator):
    r = emulator.digdir("POST", "/scopes", {"prefix": "test", "subscope": "arbeid:api.read", "description": "d",
                                            "active": True, "name": ""})
    assert r.status == 201, r
    s = r.json()
    assert s["name"] == "test:arbeid:api.read" and s["owner_orgno"] == ORG and s["active"] is True
    q = "?scope=test:arbeid:api.read"
    dd_error(emulator.digdir("POST", "/scopes", {"prefix": "test", "subscope": "arbeid:api.read"}), 400)
    assert [x["name"] for x in emulator.digdir("GET", "/scopes").json()] == ["test:arbeid:api.read"]
    assert emulator.digdir("GET", "/scopes" + q).json()["name"] == "test:arbeid:api.read"
    r = emulator.digdir("PUT", "/scopes" + q, {"prefix": "test", "subscope": "arbeid:api.read", "description": "new"})
    assert r.status == 200 and r.json()["description"] == "new"
    assert emulator.digdir("DELETE", "/scopes" + q).json()["active"] is False
    assert emulator.digdir("GET", "/scopes").json() == []
    assert emulator.digdir("GET", "/scopes?inactive=true").json()[0]["active"] is False
    dd_error(emulator.digdir("POST", "/scopes", {"prefix": "test", "subscope": "arbeid:api.read"}), 409)
    r = emulator.digdir("PUT", "/scopes" + q, {"active": True})
    assert r.status == 200 and r.json()["active"] is True
    assert len(emulator.digdir("GET", "/scopes").json()) == 1


def test_scope_prefix_is_the_orgs(emulator):
    dd_error(emulator.digdir("POST", "/scopes", {"prefix": "nav", "subscope": "x"}), 403)
    emulator.settings(org_prefix="myorg")
    assert emulator.digdir("POST", "/scopes", {"subscope": "x"}).json()["name"] == "myorg:x"
    dd_error(emulator.digdir("POST", "/scopes", {"subscope": "Bad Scope"}), 400)


def test_only_owner_changes_scope(emulator):
    dd_error(emulator.digdir("PUT", "/scopes?scope=nav:test/api", {"description": "mine"}), 403)
    dd_error(emulator.digdir("DELETE", "/scopes?scope=nav:test/api"), 403)
    dd_error(emulator.digdir("PUT", "/scopes/access/%s?scope=nav:test/api" % OTHER_ORG), 403)
    dd_error(emulator.digdir("DELETE", "/scopes?scope=no:such"), 404)


def test_access_grant_and_revoke(emulator):
    emulator.digdir("POST", "/scopes", {"subscope": "api"})
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
    emulator.digdir("POST", "/scopes", {"subscope": "own"})
    c = emulator.digdir("POST", "/clients", registration(scopes=["test:own"])).json()
    emulator.digdir("POST", jwks_url(c["client_id"]), {"keys": [public_jwk(keys[0])]})
    assert emulator.token(client_grant(emulator, keys[0], c["client_id"], "test:own")).status == 200
    emulator.digdir("DELETE", "/scopes?scope=test:own")
    mp_error(emulator.token(client_grant(emulator, keys[0], c["client_id"], "test:own")), "forbidden", "MP-250", 403)


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


def test_log_has_no_bodies(emulator, app, keys):
    emulator.token(client_grant(emulator, keys[0], app, "nav:test/api"))
    emulator.request("GET", "/api/v1/clients")
    log = emulator.log()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [("POST", "/token", 200),
                                                                    ("GET", "/api/v1/clients", 401)]
    assert all(set(e) == {"method", "path", "status", "time"} for e in log)


def test_reset(emulator, app, keys):
    emulator.fault(path="^/jwk$", status=500)
    emulator.settings(admin_token_lifetime=5, org_prefix="x")
    emulator.seed_scope("extra:scope", OTHER_ORG, accessible_for_all=True)
    emulator.reset()
    assert emulator.clients(inactive=True) == []
    assert emulator.counts() == {}
    assert emulator.request("GET", "/jwk").status == 200
    assert emulator.token(emulator.admin_grant()).json()["expires_in"] == 3600
    names = [s["name"] for s in emulator.digdir("GET", "/scopes/all").json()]
    assert sorted(names) == ["folkeregister:deling/offentligutenhjemmel", "ks:fiks", "nav:test/api",
                             "skatteetaten:testapi"]
