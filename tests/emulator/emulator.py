#!/usr/bin/python3
"""An emulator of Maskinporten (metadata, /jwk, /token) and of DigDir's
self-service admin API (/api/v1), for tests and `make run`.

It follows DigDir's and Maskinporten's public record, never the C code, so that
a bug in C is not cancelled out by the same bug here: each rule names its public
source in a comment, or says the record is silent and which strict reading it
takes (all listed in docs/digdir-api.md). One HTTPS port serves everything:
Maskinporten at the root, DigDir under /api/v1 and an unauthenticated control
API under /_emulator that tests use to seed state, inject faults and read
counters.

It never logs bodies, assertions or tokens.
"""

import argparse
import base64
import binascii
import datetime
import http.server
import ipaddress
import json
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwcrypto import jwk, jwt

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_ALGS = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}
GRANT_MAX_LIFETIME = 120
IAT_SKEW = 10
KEY_MAX_LIFETIME = 365 * 24 * 3600
MAX_KEYS = 5
MAX_BODY = 1 << 20
# Source: felleslosninger/docs oidc_api_admin.md diagram "Overføring av integrasjonskonfigurasjon, 0-2 minutter".
PROPAGATION_DELAY_MAX = 120
# Record silent on at_max_age's upper bound: the emulator refuses what a signed 32-bit integer cannot
# hold (inference: DigDir's API is a Java service), nothing smaller.
AT_MAX_AGE_MAX = 2**31 - 1
KID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
ORGNO_RE = re.compile(r"^[0-9]{9}$")
SUBSCOPE_RE = re.compile(r"^[a-zæøå0-9]([a-zæøå0-9._/:-]*[a-zæøå0-9])?$")
PREFIX_RE = re.compile(r"^[a-zæøå0-9]([a-zæøå0-9._-]*[a-zæøå0-9])?$")
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Source: felleslosninger/docs oidc_func_clientreg.md "Man må alltid sende inn nøkkeldefinisjonen
# (kty,alg,use,e,n)"; kid (same page, chosen by the customer, must be unique); x5c (same page, pins a
# business certificate); exp (OKD maskinporten_client.py re-posts keys with the exp DigDir returned).
# Record silent on any other member: strict reading, an upload carrying one is refused.
JWK_UPLOAD_REQUIRED = ("kty", "alg", "use", "kid", "e", "n")
JWK_UPLOAD_MEMBERS = set(JWK_UPLOAD_REQUIRED) | {"exp", "x5c"}
INTEGRATION_TYPES = {"maskinporten", "api_klient", "idporten", "krr", "eformidling"}
AUTH_METHODS = {"private_key_jwt", "client_secret_basic", "client_secret_post", "none"}
GRANT_TYPES = {JWT_BEARER, "authorization_code", "refresh_token", "client_credentials"}
APPLICATION_TYPES = {"web", "browser", "native"}
OID_ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")
CONSUMER_AUTHORITY = "iso6523-actorid-upis"

# The registration fields a client may set with POST or PUT /clients: those of digdirator's
# ClientRegistration (DGR pkg/digdir/types/types.go) and of OKD's fixtures (test/resources/conftest.py).
# Anything else in a body is refused: record silent, strict reading (DigDir's 2025 API validates strictly,
# OKD 0dd880a).
CLIENT_FIELDS = {
    "client_name", "description", "client_uri", "scopes", "integration_type", "application_type",
    "token_endpoint_auth_method", "grant_types", "access_token_lifetime", "authorization_lifetime",
    "refresh_token_lifetime", "refresh_token_usage", "redirect_uris", "post_logout_redirect_uris",
    "frontchannel_logout_uri", "frontchannel_logout_session_required", "sso_disabled", "code_challenge_method",
}
# Fields DigDir sets and returns on GET, which a POST or PUT body must not carry. Source:
# felleslosninger/docs oidc_api_admin_maskinporten.md, GET then PUT "(fjern created_date, last_updated)"
# (both spellings refused); client_id "Blir tildelt av Digitaliseringsdirektoratet" and client_orgno comes
# from the certificate (oidc_func_clientreg.md, oidc_api_admin.md "Eierskap til integrasjoner"). Record
# silent on client_id, client_orgno and active in a PUT body: strict reading, refused; digdirator's PUT
# (DGR toMaskinPortenClientRegistration) carries none of them and works in production.
CLIENT_READ_ONLY = ("client_id", "client_orgno", "created", "created_date", "last_updated", "active")

DEFAULT_ADMIN_SCOPES = ["idporten:dcr.read", "idporten:dcr.write", "idporten:dcr.modify", "idporten:scopes.write"]
DEFAULT_SETTINGS = {
    "admin_token_lifetime": 3600,
    "client_token_lifetime": None,  # None: the client's access_token_lifetime
    "propagation_delay": 0.0,
    "clock_offset": 0.0,
    "org_prefixes": ["test"],
    "admin_scopes": DEFAULT_ADMIN_SCOPES,
    "refused_consumers": [],
    "owner_needs_grant": False,
    "revoke_admin": False,
}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def orgno_valid(orgno):
    """Nine digits with a valid modulus-11 check digit, as Norwegian organisation numbers have."""
    if not isinstance(orgno, str) or not ORGNO_RE.match(orgno):
        return False
    weights = (3, 2, 7, 6, 5, 4, 3, 2)
    rest = 11 - sum(int(d) * w for d, w in zip(orgno[:8], weights)) % 11
    check = 0 if rest == 11 else rest
    return check != 10 and check == int(orgno[8])


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(v, what, pattern=None):
    """v as a list of distinct strings (a space-separated string is split); ValueError otherwise."""
    if isinstance(v, str):
        v = v.split()
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError("%s must be a list of non-empty strings" % what)
    bad = [x for x in v if pattern is not None and not pattern.match(x)]
    if bad:
        raise ValueError("%s: malformed entries %s" % (what, ", ".join(bad)))
    return list(dict.fromkeys(v))


def check_setting(name, v):
    """The value a control-API setting is stored as; ValueError says why it is refused."""
    if name == "admin_token_lifetime":
        if not is_int(v) or v < 1:
            raise ValueError("admin_token_lifetime must be a positive integer (seconds)")
        return v
    if name == "client_token_lifetime":
        if v is not None and (not is_int(v) or v < 1):
            raise ValueError("client_token_lifetime must be null or a positive integer (seconds)")
        return v
    if name == "propagation_delay":
        if not is_num(v) or not 0 <= v <= PROPAGATION_DELAY_MAX:
            raise ValueError("propagation_delay must be a number of seconds from 0 to %d" % PROPAGATION_DELAY_MAX)
        return float(v)
    if name == "clock_offset":
        if not is_num(v):
            raise ValueError("clock_offset must be a number of seconds")
        return float(v)
    if name == "org_prefixes":
        return _str_list(v, "org_prefixes", PREFIX_RE)
    if name == "admin_scopes":
        return _str_list(v, "admin_scopes", re.compile(r"^\S+$"))
    if name == "refused_consumers":
        return _str_list(v, "refused_consumers", ORGNO_RE)
    if name in ("owner_needs_grant", "revoke_admin"):
        if not isinstance(v, bool):
            raise ValueError("%s must be true or false" % name)
        return v
    raise ValueError("unknown setting %s" % name)


# ---------------------------------------------------------------------------
# Key material, generated fresh at every start.


def _name(**attrs):
    oids = {
        "cn": NameOID.COMMON_NAME,
        "o": NameOID.ORGANIZATION_NAME,
        "c": NameOID.COUNTRY_NAME,
        "serial": NameOID.SERIAL_NUMBER,
        "orgid": OID_ORGANIZATION_IDENTIFIER,
    }
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _cert(subject, issuer, pub, signer, issuer_pub, ca, sans=None, eku=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(signer, hashes.SHA256())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class Material:
    """Every key and certificate of one emulator run.

    TLS and the business CA use P-256 (fast to make); the keys that sign RS256
    (the emulator's token key and the admin client's business certificate)
    are RSA-2048.
    """

    def __init__(self, orgno):
        tls_ca_key = ec.generate_private_key(ec.SECP256R1())
        tls_ca_name = _name(cn="Maskinporten emulator TLS CA", o="emulator")
        self.tls_ca = _cert(
            tls_ca_name, tls_ca_name, tls_ca_key.public_key(), tls_ca_key, tls_ca_key.public_key(), True
        )
        self.tls_key = ec.generate_private_key(ec.SECP256R1())
        self.tls_cert = _cert(
            _name(cn="localhost", o="emulator"),
            tls_ca_name,
            self.tls_key.public_key(),
            tls_ca_key,
            tls_ca_key.public_key(),
            False,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )

        biz_ca_key = ec.generate_private_key(ec.SECP256R1())
        biz_ca_name = _name(cn="Emulated business certificate CA", o="emulator", c="NO")
        self.biz_ca = _cert(
            biz_ca_name, biz_ca_name, biz_ca_key.public_key(), biz_ca_key, biz_ca_key.public_key(), True
        )
        self.biz_ca_key = biz_ca_key
        self.admin_key = rsa.generate_private_key(65537, 2048)
        self.admin_cert = self.make_business_cert(orgno, self.admin_key.public_key())
        # The pre-registered admin JWK's kid is x5t#S256 of the leaf, as DigDir used it in 2023.
        self.admin_kid = b64url(self.admin_cert.fingerprint(hashes.SHA256()))

        self.sign_key = rsa.generate_private_key(65537, 2048)
        self.sign_jwk = jwk.JWK.from_pyca(self.sign_key)
        self.sign_kid = self.sign_jwk.thumbprint()

    def make_business_cert(self, orgno, pub, name="EMULATED ORGANISATION"):
        """A leaf under the business CA for organisation orgno (tests use it for foreign certificates)."""
        subject = _name(cn=name, o=name, serial=orgno, orgid="NTRNO-" + orgno, c="NO")
        return _cert(
            subject,
            self.biz_ca.subject,
            pub,
            self.biz_ca_key,
            self.biz_ca_key.public_key(),
            False,
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )

    def public_jwks(self):
        pub = json.loads(self.sign_jwk.export_public())
        pub.update({"kid": self.sign_kid, "use": "sig", "alg": "RS256"})
        return {"keys": [pub]}

    def write(self, state_dir):
        def put(name, data, mode=0o644):
            path = os.path.join(state_dir, name)
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(path + ".tmp", mode)
            os.replace(path + ".tmp", path)
            return path

        files = {}
        files["ca_file"] = put("ca.pem", _pem(self.tls_ca))
        files["server_cert"] = put("server-cert.pem", _pem(self.tls_cert) + _pem(self.tls_ca))
        files["server_key"] = put(
            "server-key.pem",
            self.tls_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        files["admin_key_file"] = put(
            "admin-key.pem",
            self.admin_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        files["admin_cert_file"] = put("admin-chain.pem", _pem(self.admin_cert) + _pem(self.biz_ca))
        files["business_ca_file"] = put("business-ca.pem", _pem(self.biz_ca))
        return files


def _verify_with(pub, signature, data, hash_cls):
    """Verifies an RSA PKCS#1 v1.5 or ECDSA signature; False when it does not hold."""
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, data, padding.PKCS1v15(), hash_cls())
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, data, ec.ECDSA(hash_cls()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _rsa_from_jwk(key):
    n = int.from_bytes(b64url_decode(key["n"]), "big")
    e = int.from_bytes(b64url_decode(key["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


# ---------------------------------------------------------------------------
# Errors and replies.


class Reply:
    def __init__(self, status, body=None, content_type="application/json", headers=None):
        self.status = status
        if body is None:
            self.body = b""
        elif isinstance(body, bytes):
            self.body = body
        elif isinstance(body, str):
            self.body = body.encode("utf-8")
        else:
            self.body = json.dumps(body).encode("utf-8")
        self.content_type = content_type if self.body or content_type != "application/json" else None
        self.headers = dict(headers or {})


class MPError(Exception):
    """A Maskinporten token-endpoint error."""

    def __init__(self, error, description, code=None, status=400):
        super().__init__(description)
        self.error, self.description, self.code, self.status = error, description, code, status


class DDError(Exception):
    """A DigDir admin API error: status and a list of (message, field or None)."""

    def __init__(self, status, messages, object_name="Client", headers=None):
        if isinstance(messages, str):
            messages = [(messages, None)]
        super().__init__("; ".join(m for m, _ in messages))
        self.status, self.messages, self.object_name = status, messages, object_name
        self.headers = headers or {}


def dd_error_body(status, messages, object_name="Client"):
    """DigDir's 2025 error shape, including its odd leading ", " (OKD's fixture client_error_response in
    test/maskinporten_api/conftest.py, which OKD resources/errors.py parses)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    joined = "".join(", " + m for m, _ in messages)
    return {
        "status": status,
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + "%09dZ" % (now.microsecond * 1000),
        "correlation_id": str(uuid.uuid4()),
        "errors": [
            {
                "errorMessage": m,
                "isFieldError": f is not None,
                "objectName": object_name,
                "fieldIdentifier": f,
            }
            for m, f in messages
        ],
        "error": joined,
        "error_description": joined,
    }


# ---------------------------------------------------------------------------
# The emulated services.


class Service:
    def __init__(self, material, orgno, base_url, propagation_delay=0.0):
        self.m = material
        self.orgno = orgno
        self.base_url = base_url
        self.issuer = base_url + "/"
        self.admin_client_id = "emulator-admin-" + uuid.uuid4().hex[:12]
        self.initial_propagation_delay = check_setting("propagation_delay", propagation_delay)
        self.lock = threading.RLock()
        self._last_stamp_ms = 0
        self.reset()

    # -- clock and bookkeeping

    def now(self):
        return time.time() + float(self.settings["clock_offset"])

    def stamp(self):
        """An ISO-8601 timestamp with milliseconds, distinct and increasing within the run."""
        with self.lock:
            ms = max(int(self.now() * 1000), self._last_stamp_ms + 1)
            self._last_stamp_ms = ms
        dt = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
        return dt.isoformat(timespec="milliseconds")

    def reset(self):
        with self.lock:
            self.settings = json.loads(json.dumps(DEFAULT_SETTINGS))
            self.settings["propagation_delay"] = self.initial_propagation_delay
            self.clients = {}
            self.kid_owner = {}  # kid -> client_id, over every client: DigDir's kids are unique across customers
            self.scopes = {}
            self.access = {}
            self.faults = []
            self.counts = {}
            self.bytes = {}
            self.log = []
            self.used_jti = {}
            self._seed()

    def _seed(self):
        skatt, nav, ks = "974761076", "983887457", "971032146"
        self.seed_scope({"name": "skatteetaten:testapi", "owner_orgno": skatt,
                 "consumers": [{"orgno": self.orgno, "state": "APPROVED"}]})
        self.seed_scope({"name": "nav:test/api", "owner_orgno": nav,
                 "consumers": [{"orgno": self.orgno, "state": "APPROVED"}]})
        self.seed_scope({"name": "ks:fiks", "owner_orgno": ks, "accessible_for_all": True})
        self.seed_scope({"name": "folkeregister:deling/offentligutenhjemmel", "owner_orgno": skatt})

    def count_bytes(self, key, n):
        """Body bytes sent per route, for the benchmarks' cost figures (GET /_emulator/bytes)."""
        with self.lock:
            self.bytes[key] = self.bytes.get(key, 0) + n

    def count(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def record(self, method, path, status, start=None):
        """One request in the log: when it arrived (start) and when it was answered (time)."""
        now = time.time()
        with self.lock:
            self.log.append({"method": method, "path": path, "status": status, "time": now,
                             "start": now if start is None else start})
            if len(self.log) > 10000:
                del self.log[:1000]

    # -- faults

    def add_fault(self, spec):
        if not isinstance(spec, dict):
            raise DDError(400, "fault must be an object")
        try:
            fault = {
                "id": uuid.uuid4().hex[:8],
                "method": spec.get("method"),
                "path_re": re.compile(spec.get("path") or ""),
                "path": spec.get("path"),
                "status": spec.get("status"),
                "body": spec.get("body"),
                "retry_after": spec.get("retry_after"),
                "delay": float(spec.get("delay") or 0),
                "drop": bool(spec.get("drop")),
                "malformed": bool(spec.get("malformed")),
                "truncate": bool(spec.get("truncate")),
                "content_type": spec.get("content_type"),
                "count": spec.get("count"),
                "fraction": float(spec.get("fraction", 1.0)),
            }
        except (re.error, TypeError, ValueError) as e:
            raise DDError(400, "bad fault: %s" % e)
        with self.lock:
            self.faults.append(fault)
        return {"id": fault["id"]}

    def take_fault(self, method, path):
        """The first fault matching this request, consuming one of its count."""
        with self.lock:
            for f in self.faults:
                if f["method"] and f["method"].upper() != method:
                    continue
                if not f["path_re"].search(path):
                    continue
                if f["fraction"] < 1.0 and random.random() >= f["fraction"]:
                    continue
                if f["count"] is not None:
                    f["count"] -= 1
                    if f["count"] <= 0:
                        self.faults.remove(f)
                return dict(f)
        return None

    def fault_reply(self, fault, path):
        status = int(fault["status"])
        if fault["body"] is not None:
            body = fault["body"]
        elif path.startswith("/api/"):
            body = dd_error_body(status, [("injected fault", None)])
        else:
            body = {"error": "server_error", "error_description": "injected fault (trace_id: %s)" % uuid.uuid4().hex}
        return Reply(status, body)

    # -- Maskinporten

    def metadata(self):
        return {
            "authorization_details_types_supported": ["urn:altinn:systemuser", "urn:altinn:consent"],
            "grant_types_supported": [JWT_BEARER],
            "issuer": self.issuer,
            "jwks_uri": self.base_url + "/jwk",
            "token_endpoint": self.base_url + "/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": sorted(GRANT_ALGS),
        }

    def mp_error_reply(self, e):
        body = {"error": e.error, "error_description": "%s (trace_id: %s)" % (e.description, uuid.uuid4().hex)}
        if e.code:
            body["error_uri"] = "%s/errors/%s" % (self.base_url, e.code)
        return Reply(e.status, body)

    def token(self, headers, raw):
        try:
            return Reply(200, self._token(headers, raw), headers={"Cache-Control": "no-store"})
        except MPError as e:
            return self.mp_error_reply(e)

    def _token(self, headers, raw):
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise MPError("invalid_request", "Invalid request. Content-Type must be application/x-www-form-urlencoded", "MP-011")
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise MPError("invalid_request", "Invalid request. Malformed form body", "MP-011")
        if any(len(v) > 1 for v in form.values()):
            raise MPError("invalid_request", "Invalid request. Repeated parameter", "MP-011")
        grant_type = form.get("grant_type", [None])[0]
        if grant_type != JWT_BEARER:
            raise MPError("unsupported_grant_type", "Invalid request. Unsupported grant_type")
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            raise MPError("invalid_request", "Invalid request. Missing assertion", "MP-011")
        header, claims, signing_input, signature = self._parse_jws(assertion)

        alg = header.get("alg")
        if alg not in GRANT_ALGS:
            raise MPError("invalid_grant", "Invalid assertion. Unsupported signing algorithm %s" % alg, "MP-124")
        kid, x5c = header.get("kid"), header.get("x5c")
        if kid is None and x5c is None:
            raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. The JWT header must hold kid or x5c", "MP-100")
        if x5c is not None and (not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c)):
            raise MPError("invalid_grant", "Invalid assertion. Invalid x5c header: must be an array of strings", "MP-123")
        if kid is not None and not isinstance(kid, str):
            raise MPError("invalid_request", "Invalid assertion. Invalid parameter value: kid", "MP-011")

        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.issuer not in auds:
            raise MPError("invalid_grant", "Invalid assertion. Invalid JWT claim aud", "MP-110")

        now = self.now()
        with self.lock:
            iss = claims.get("iss")
            is_admin = iss == self.admin_client_id
            client = None if is_admin else self._known_client(iss, now)
            if not is_admin and client is None:
                raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. Client not found", "MP-100")
            orgno = self.orgno if is_admin else client["orgno"]
            pub, amr = self._grant_key(is_admin, client, orgno, kid, x5c, now)
            if not _verify_with(pub, signature, signing_input, GRANT_ALGS[alg]):
                raise MPError("invalid_grant", "Invalid assertion. Invalid JWT signature", "MP-124")
            if is_admin and self.settings["revoke_admin"]:
                raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. Certificate is revoked", "MP-120")

            iat, exp = claims.get("iat"), claims.get("exp")
            if not is_num(iat) or not is_num(exp):
                raise MPError("invalid_request", "Invalid assertion. Invalid parameter value: iat and exp are required", "MP-011")
            if iat > now + IAT_SKEW:
                raise MPError("invalid_grant", "Invalid assertion. Issue time is after now", "MP-130")
            if iat < now - IAT_SKEW:
                raise MPError("invalid_grant", "Invalid assertion. Issue time is more than %d seconds before now" % IAT_SKEW, "MP-130")
            if exp - iat > GRANT_MAX_LIFETIME:
                raise MPError("invalid_grant", "Invalid assertion. exp - iat exceeds %d seconds" % GRANT_MAX_LIFETIME, "MP-130")
            if exp <= now:
                raise MPError("invalid_grant", "Invalid assertion. JWT is expired", "MP-130")
            nbf = claims.get("nbf")
            if nbf is not None and (not is_num(nbf) or nbf > now + IAT_SKEW):
                raise MPError("invalid_grant", "Invalid assertion. JWT is not yet valid (nbf)", "MP-130")
            jti = claims.get("jti")
            if jti is not None and not isinstance(jti, str):
                raise MPError("invalid_request", "Invalid assertion. Invalid parameter value: jti", "MP-011")
            for used in [j for j, until in self.used_jti.items() if until < now]:
                del self.used_jti[used]
            if jti is not None and (iss, jti) in self.used_jti:
                raise MPError("invalid_grant", "Invalid assertion. Grant is used before", "MP-012")

            scope = claims.get("scope")
            scopes = scope.split() if isinstance(scope, str) else []
            if not scopes:
                raise MPError("invalid_scope", "Token request contains no scope", "MP-200")
            # The admin client holds the scopes DigDir gave it by hand (control setting admin_scopes); asking
            # for any other is MP-200. Source: felleslosninger/docs oidc_api_admin_maskinporten.md
            # "administrasjons-klient må manuelt få tildelt scopes"; maskinporten_protocol_jwtgrant.md "the
            # client must have pre-registered with rights to all the scopes".
            allowed = set(self.settings["admin_scopes"]) if is_admin else set(client["reg"]["scopes"])
            bad = [s for s in scopes if s not in allowed]
            if bad:
                raise MPError("invalid_scope", "Token request contains invalid scopes for client, %s" % " ".join(bad), "MP-200")
            if not is_admin:
                for s in scopes:
                    if not self._may_consume(orgno, s):
                        raise MPError("forbidden", "Consumer has not been granted access to the scope %s." % s, "MP-250", 403)

            if jti is not None:
                self.used_jti[(iss, jti)] = exp + IAT_SKEW
            if is_admin:
                lifetime = int(self.settings["admin_token_lifetime"])
            elif self.settings["client_token_lifetime"] is not None:
                lifetime = int(self.settings["client_token_lifetime"])
            else:
                # 0 means "the system default", which the record does not state; the emulator uses 120 s.
                lifetime = int(client["reg"].get("access_token_lifetime") or 120)
            if not is_admin:
                # Source: felleslosninger/docs oidc_protocol_scope.md, at_max_age "defines a maximium allowable
                # expires_in for access tokens having this scope. If multiple scopes are included into one
                # token, the lowest value for at_max_age is enforced. A zero value means that lifetime is
                # based on the client setting or system default."
                caps = [self.scopes[s].get("at_max_age") or 0 for s in scopes]
                caps = [c for c in caps if c > 0]
                if caps:
                    lifetime = min(lifetime, min(caps))
            self.counts["token:admin" if is_admin else "token:client"] = (
                self.counts.get("token:admin" if is_admin else "token:client", 0) + 1
            )
        access_token = self.issue_token(iss, orgno, " ".join(scopes), lifetime, amr, now)
        return {"access_token": access_token, "token_type": "Bearer", "expires_in": lifetime, "scope": " ".join(scopes)}

    def _parse_jws(self, assertion):
        parts = assertion.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not a compact JWS")
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
            if not isinstance(header, dict) or not isinstance(claims, dict):
                raise ValueError("not objects")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise MPError("invalid_request", "Invalid assertion. Invalid parameter value: not a signed JWT", "MP-011")
        return header, claims, (parts[0] + "." + parts[1]).encode("ascii"), signature

    def _known_client(self, client_id, now):
        """The active client, once DigDir's propagation delay has passed since it was made."""
        if not isinstance(client_id, str):
            return None
        c = self.clients.get(client_id)
        if c is None or not c["reg"]["active"]:
            return None
        if c["known_since"] + float(self.settings["propagation_delay"]) > now:
            return None
        return c

    def _grant_key(self, is_admin, client, orgno, kid, x5c, now):
        """The public key the grant must verify with, and the client_amr it earns."""
        if x5c is not None and (is_admin or kid is None):
            if not is_admin and client["jwks"]["keys"]:
                raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. The client has registered keys: use kid", "MP-100")
            leaf = self._verify_chain(x5c, now)
            serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
            if not serials or serials[0].value != orgno:
                raise MPError("invalid_grant", "Invalid assertion. The certificate's organisation number does not match the client's", "MP-122")
            return leaf.public_key(), "virksomhetssertifikat"
        if is_admin:
            if kid != self.m.admin_kid:
                raise MPError("invalid_grant", "Invalid assertion. Unknown key identifier (kid) for client", "MP-100")
            return self.m.admin_cert.public_key(), "private_key_jwt"
        for key in client["jwks"]["keys"]:
            if key["kid"] != kid:
                continue
            if client["key_since"].get(kid, 0) + float(self.settings["propagation_delay"]) > now:
                break
            if key["exp"] <= now:
                raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. Expired key", "MP-121")
            return _rsa_from_jwk(key), "private_key_jwt"
        raise MPError("invalid_grant", "Invalid assertion. Unknown key identifier (kid) for client", "MP-100")

    def _verify_chain(self, x5c, now):
        """Leaf of an x5c chain (standard base64 DER, leaf first) that ends at the business CA."""
        try:
            certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except (ValueError, binascii.Error):
            raise MPError("invalid_grant", "Invalid assertion. Invalid x5c header: not base64 DER certificates", "MP-123")
        ca = self.m.biz_ca
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
        chain = list(certs)
        if chain[-1] == ca:
            chain.pop()
        if not chain:
            raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. Signed with an invalid certificate", "MP-120")
        for i, cert in enumerate(chain):
            issuer = chain[i + 1] if i + 1 < len(chain) else ca
            ok = (
                cert.issuer == issuer.subject
                and cert.not_valid_before <= when <= cert.not_valid_after
                and _verify_with(issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, type(cert.signature_hash_algorithm))
            )
            if not ok:
                raise MPError("invalid_grant", "Invalid assertion. Client authentication failed. Signed with an invalid certificate", "MP-120")
        return chain[0]

    def _may_consume(self, orgno, name):
        s = self.scopes.get(name)
        if s is None or not s["active"]:
            return False
        if s["accessible_for_all"]:
            return True
        # Record silent on whether an owner must grant itself access to its own scope. By default the
        # owner may consume it without a grant; owner_needs_grant makes it need one like anybody else.
        if s["owner_orgno"] == orgno and not self.settings["owner_needs_grant"]:
            return True
        a = self.access.get((name, orgno))
        return a is not None and a["state"] == "APPROVED"

    def issue_token(self, client_id, orgno, scope, lifetime, amr, now=None):
        now = int(self.now() if now is None else now)
        claims = {
            "iss": self.issuer,
            "client_amr": amr,
            "token_type": "Bearer",
            "client_id": client_id,
            "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:" + orgno},
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
        }
        # No client_orgno, admin tokens included: Maskinporten promises only consumer ("This value is always
        # present", felleslosninger/docs maskinporten_protocol_token.md, whose claim table has no client_orgno);
        # maskinporten_guide_apitilbyder.md calls client_orgno an old claim that will be removed, and DigDir's
        # client_orgno sample is a 2021 ID-porten token (oidc_api_admin.md). So the DigDir side never reads it.
        t = jwt.JWT(header={"alg": "RS256", "kid": self.m.sign_kid, "typ": "at+jwt"}, claims=claims)
        t.make_signed_token(self.m.sign_jwk)
        return t.serialize()

    def admin_token(self, scope=None):
        """A token for the admin client, as /token would give it; scope defaults to all the client holds."""
        with self.lock:
            lifetime = int(self.settings["admin_token_lifetime"])
            held = self.settings["admin_scopes"]
        wanted = held if scope is None else scope.split()
        bad = [s for s in wanted if s not in held]
        if bad:
            raise DDError(400, "the admin client does not hold %s" % " ".join(bad))
        token = self.issue_token(self.admin_client_id, self.orgno, " ".join(wanted), lifetime, "virksomhetssertifikat")
        return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": " ".join(wanted)}

    # -- DigDir authentication

    def bearer(self, headers):
        """Checks the Authorization header; returns (orgno, set of scopes)."""
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise DDError(401, "Full authentication is required to access this resource", headers={"WWW-Authenticate": "Bearer"})
        bad = DDError(401, "Invalid or expired access token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        parts = auth[7:].strip().split(".")
        try:
            if len(parts) != 3:
                raise ValueError
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            sig = b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise bad
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise bad
        if header.get("alg") != "RS256" or header.get("kid") != self.m.sign_kid:
            raise bad
        if not _verify_with(self.m.sign_key.public_key(), sig, (parts[0] + "." + parts[1]).encode(), hashes.SHA256):
            raise bad
        if claims.get("iss") != self.issuer or not is_num(claims.get("exp")) or claims["exp"] <= self.now():
            raise bad
        if claims.get("client_id") == self.admin_client_id and self.settings["revoke_admin"]:
            raise bad
        # The organisation is consumer.ID, "0192:<orgno>", and nothing else (see issue_token).
        consumer = claims.get("consumer")
        if not isinstance(consumer, dict) or consumer.get("authority") != CONSUMER_AUTHORITY:
            raise bad
        m = re.fullmatch(r"0192:([0-9]{9})", str(consumer.get("ID")))
        if not m:
            raise bad
        scopes = set(str(claims.get("scope", "")).split())
        return m.group(1), scopes

    @staticmethod
    def need(scopes, *any_of):
        if not scopes.intersection(any_of):
            raise DDError(403, "Access denied: the token needs one of the scopes %s" % ", ".join(any_of))

    # -- DigDir clients

    def client_view(self, c):
        """The client as DigDir answers it, a fresh dict decoded from the cached JSON."""
        return json.loads(c["json"])

    @staticmethod
    def _stored(c):
        """Re-serialises a client after a change: listings join these bytes instead of dumping dicts."""
        c["json"] = json.dumps(c["reg"]).encode("utf-8")

    def _client(self, orgno, client_id):
        c = self.clients.get(client_id)
        if c is None or c["orgno"] != orgno or not c["reg"]["active"]:
            raise DDError(404, "Client %s not found" % client_id)
        return c

    def validate_client(self, body, orgno, existing=None):
        """The registration a POST or PUT body asks for, or DDError(400) listing every problem.

        A PUT replaces the registration (existing is the client it replaces): every field it leaves out
        gets the value a POST without it would give. Source: felleslosninger/docs
        oidc_api_admin_maskinporten.md and maskinporten_guide_apitilbyder.md tell a client to GET the
        registration, change it and PUT the whole object back, which only makes sense if a PUT replaces;
        RFC 7592 section 2.2 (the DCR management protocol DigDir's RFC 7591 API follows) says omitted
        fields are deleted. No source says DigDir keeps any omitted field, so none is kept.
        """
        if not isinstance(body, dict):
            raise DDError(400, "The request body must be a JSON object")
        errs = []

        def field(name, msg):
            errs.append(("%s: %s" % (name, msg), name))

        for name in CLIENT_READ_ONLY:
            if name in body:
                field(name, "is set by DigDir; remove it from the body (GET answers carry it, PUT must not)")
        for name in sorted(set(body) - CLIENT_FIELDS - set(CLIENT_READ_ONLY)):
            field(name, "unknown field")
        itype = body.get("integration_type")
        if itype not in INTEGRATION_TYPES:
            field("integration_type", "must be one of %s" % ", ".join(sorted(INTEGRATION_TYPES)))
        # Source: felleslosninger/docs oidc_func_clientreg.md "Det er ikke mulig å endre integrasjonstype
        # etter opprettelse".
        if existing is not None and itype != existing["reg"]["integration_type"]:
            field("integration_type", "cannot change integration type after creation (existing: %s, requested: %s)" % (existing["reg"]["integration_type"], itype))
        for name in ("client_name", "description"):
            v = body.get(name)
            if not isinstance(v, str) or not v.strip():
                field(name, "must not be empty")
            elif len(v) > 255:
                field(name, "must be at most 255 characters")
        # Source for the combinations: felleslosninger/docs oidc_func_clientreg.md "Oversikt over
        # kombinasjonar": Maskinporten = web, private_key_jwt, jwt_bearer_token.
        method = body.get("token_endpoint_auth_method", "private_key_jwt")
        if method not in AUTH_METHODS:
            field("token_endpoint_auth_method", "unknown method %r" % method)
        elif itype == "maskinporten" and method != "private_key_jwt":
            field("token_endpoint_auth_method", "maskinporten clients must use private_key_jwt")
        grants = body.get("grant_types")
        if not isinstance(grants, list) or not grants or not all(isinstance(g, str) for g in grants):
            field("grant_types", "must be a non-empty list of strings")
        elif any(g not in GRANT_TYPES for g in grants):
            field("grant_types", "unknown grant type")
        elif itype == "maskinporten" and grants != [JWT_BEARER]:
            field("grant_types", "maskinporten clients must have exactly the grant %s" % JWT_BEARER)
        app_type = body.get("application_type", "web")
        if app_type not in APPLICATION_TYPES:
            field("application_type", "unknown application type")
        elif itype == "maskinporten" and app_type != "web":
            field("application_type", "maskinporten clients must have application_type web")
        for name in ("access_token_lifetime", "authorization_lifetime", "refresh_token_lifetime"):
            v = body.get(name)
            if v is not None and (not is_int(v) or v < 0):
                field(name, "must be a non-negative integer")
        for name in ("redirect_uris", "post_logout_redirect_uris"):
            v = body.get(name)
            if v is not None and (not isinstance(v, list) or not all(isinstance(u, str) for u in v)):
                field(name, "must be null or a list of strings")
        for name in ("frontchannel_logout_session_required", "sso_disabled"):
            if name in body and not isinstance(body[name], bool):
                field(name, "must be a boolean")
        for name in ("client_uri", "frontchannel_logout_uri", "code_challenge_method"):
            if body.get(name) is not None and not isinstance(body[name], str):
                field(name, "must be a string")
        if body.get("refresh_token_usage", "ONETIME") not in ("ONETIME", "REUSE"):
            field("refresh_token_usage", "must be ONETIME or REUSE")
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            field("scopes", "must be a list of strings")
        elif not scopes:
            # Source: issue nais/digdirator#108 "A client without any scopes is disallowed".
            field("scopes", "a client must have at least one scope")
        else:
            if len(set(scopes)) != len(scopes):
                field("scopes", "contains duplicates")
            for s in scopes:
                reg = self.scopes.get(s)
                if reg is None or not reg["active"]:
                    field("scopes", "unknown scope %s" % s)
                elif not self._may_consume(orgno, s):
                    field("scopes", "organisation %s has no access to scope %s" % (orgno, s))
        if errs:
            raise DDError(400, errs)

        # What a field left out becomes. Lifetimes 0, refresh_token_usage ONETIME and
        # frontchannel_logout_session_required false: OKD's fixture of a POST /clients answer for a body
        # without them (test/resources/conftest.py). application_type web: the Maskinporten POST example
        # in felleslosninger/docs maskinporten_sjolvbetjening_api.md leaves it out. sso_disabled false and
        # empty redirect lists: record silent, the values digdirator sends. client_uri,
        # frontchannel_logout_uri and code_challenge_method: absent.
        reg = {
            "access_token_lifetime": body.get("access_token_lifetime") or 0,
            "application_type": app_type,
            "authorization_lifetime": body.get("authorization_lifetime") or 0,
            "client_name": body["client_name"],
            "description": body["description"],
            "frontchannel_logout_session_required": body.get("frontchannel_logout_session_required", False),
            "grant_types": list(grants),
            "integration_type": itype,
            "post_logout_redirect_uris": body.get("post_logout_redirect_uris") or [],
            "redirect_uris": body.get("redirect_uris") or [],
            "refresh_token_lifetime": body.get("refresh_token_lifetime") or 0,
            "refresh_token_usage": body.get("refresh_token_usage", "ONETIME"),
            "scopes": list(scopes),
            "sso_disabled": body.get("sso_disabled", False),
            "token_endpoint_auth_method": method,
        }
        for name in ("client_uri", "frontchannel_logout_uri", "code_challenge_method"):
            if isinstance(body.get(name), str):
                reg[name] = body[name]
        return reg

    def create_client(self, reg, orgno, jwks=None, known_since=None, stamp=None):
        """Registers a client; known_since (default now) starts its propagation delay, 0 means known."""
        stamp = stamp or self.stamp()
        client_id = str(uuid.uuid4())
        reg = dict(reg)
        reg.update({"client_id": client_id, "client_orgno": orgno, "created": stamp, "last_updated": stamp, "active": True})
        c = {
            "reg": reg,
            "orgno": orgno,
            "known_since": self.now() if known_since is None else known_since,
            "jwks": {"keys": []},
            "key_since": {},
        }
        self._stored(c)
        if jwks:
            self.seed_jwks(c, jwks)
        self.clients[client_id] = c
        return c

    def set_jwks(self, c, keys):
        """POST/PUT /clients/{id}/jwks: replaces the client's whole key set, or DDError(400) listing every
        problem. Source for replacing: felleslosninger/docs oidc_api_admin.md "både POST og PUT erstatter
        evt. eksisterende JWKS", "inntil 5"."""
        now = self.now()
        if not isinstance(keys, list):
            raise DDError(400, [("keys: must be a list", "keys")], "JWKS")
        # Source: OKD maskinporten_client.py "When deleting the last key, we need to DELETE instead of
        # POST-ing an empty `keys` object."
        if not keys:
            raise DDError(400, [("keys: must hold at least one key (DELETE removes them all)", "keys")], "JWKS")
        if len(keys) > MAX_KEYS:
            raise DDError(400, [("keys: at most %d keys are allowed, got %d" % (MAX_KEYS, len(keys)), "keys")], "JWKS")
        errs = []
        seen = set()
        out = []
        for i, key in enumerate(keys):
            def bad(msg, i=i):
                errs.append(("keys[%d]: %s" % (i, msg), "keys[%d]" % i))

            if not isinstance(key, dict):
                bad("must be an object")
                continue
            # Every member of JWK_UPLOAD_REQUIRED, use included: the API of 2025-05-22 refuses an upload
            # in which any key lacks use (OKD e12da91, _jwk_ensure_use_sig).
            missing = [m for m in JWK_UPLOAD_REQUIRED if m not in key]
            if missing:
                bad("%s %s required" % (", ".join(missing), "is" if len(missing) == 1 else "are"))
            private = [m for m in PRIVATE_JWK_MEMBERS if m in key]
            if private:
                bad("private key members are not allowed: %s" % ", ".join(private))
            other = sorted(set(key) - JWK_UPLOAD_MEMBERS - set(PRIVATE_JWK_MEMBERS))
            if other:
                bad("members not allowed: %s (allowed: %s)" % (", ".join(other), ", ".join(sorted(JWK_UPLOAD_MEMBERS))))
            if "kty" in key and key["kty"] != "RSA":
                bad("kty must be RSA")
            if "use" in key and key["use"] != "sig":
                bad("use must be sig")
            kid = key.get("kid")
            if "kid" in key:
                # Source: felleslosninger/docs oidc_func_clientreg.md, oidc_api_admin.md: kid "må være unik
                # innenfor alle ID-porten/Maskinportens kunder"; newer text: alphanumerics and ._-
                if not isinstance(kid, str) or not KID_RE.match(kid):
                    bad("kid must match ^[A-Za-z0-9._-]+$")
                elif kid in seen:
                    bad("duplicate kid %s" % kid)
                else:
                    seen.add(kid)
                    owner = self.kid_owner.get(kid)
                    if owner is not None and owner != c["reg"]["client_id"]:
                        bad("kid %s is registered on another client; a kid must be unique across all customers" % kid)
            if "alg" in key and key["alg"] not in GRANT_ALGS:
                bad("alg must be one of RS256, RS384, RS512")
            if "n" in key and "e" in key:
                try:
                    n = int.from_bytes(b64url_decode(key["n"]), "big")
                    e = int.from_bytes(b64url_decode(key["e"]), "big")
                    if n.bit_length() < 2048 or e < 3:
                        bad("n must be at least 2048 bits")
                except (ValueError, TypeError, binascii.Error):
                    bad("n and e must be base64url")
            x5c = key.get("x5c")
            if "x5c" in key and (not isinstance(x5c, list) or not x5c or not all(isinstance(x, str) for x in x5c)):
                bad("x5c must be a non-empty list of strings")
            # Source: felleslosninger/docs maskinporten_autentisering.md "En nøkkel har maks ett års levetid
            # fra tidspunktet den blir postet på"; without exp a key gets a year (maskinporten_feilsoking.md
            # MP-121: "Nøkler har 1 års levetid fra det tidspunktet de blir postet på klienten"). Record
            # silent on whether a longer exp is capped or refused: strict reading, refused.
            exp = key.get("exp")
            if exp is None:
                exp = int(now) + KEY_MAX_LIFETIME
            elif not is_int(exp):
                bad("exp must be an integer (seconds since the epoch)")
            elif exp <= now:
                bad("exp is in the past")
            elif exp > now + KEY_MAX_LIFETIME:
                bad("exp is more than one year after now; a key lives at most one year from its upload")
            pub = {m: key[m] for m in key if m in JWK_UPLOAD_MEMBERS}
            pub["exp"] = exp
            out.append(pub)
        if errs:
            raise DDError(400, errs, "JWKS")
        return self._replace_jwks(c, out, now, propagate=True)

    def seed_jwks(self, c, keys):
        """Control API: keys DigDir already holds for a client made elsewhere, kept member for member.

        Keys registered before the API change of 2025-05-22 may lack use: OKD e12da91 (and 4770872, still
        in 2026-01) adds "use":"sig" to old keys before posting them back, which only makes sense if DigDir
        holds and returns keys without it (an inference from OKD's code); OKD's 2021 fixture of a key answer
        has none. They are stored and returned as seeded, nothing added but exp when the seed has none,
        because DigDir gives every registered key one. They are known to Maskinporten at once (registered
        long ago).
        """
        now = self.now()
        if isinstance(keys, dict):
            keys = keys.get("keys")
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise DDError(400, "jwks must be a list of at most %d keys" % MAX_KEYS, "JWKS")
        out, seen = [], set()
        for key in keys:
            if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"] or key.get("kty") != "RSA":
                raise DDError(400, "each seeded key needs kty RSA and a kid", "JWKS")
            kid = key["kid"]
            owner = self.kid_owner.get(kid)
            if kid in seen or (owner is not None and owner != c["reg"]["client_id"]):
                raise DDError(400, "kid %s is not unique" % kid, "JWKS")
            seen.add(kid)
            if any(m in key for m in PRIVATE_JWK_MEMBERS):
                raise DDError(400, "a seeded key must be public", "JWKS")
            try:
                _rsa_from_jwk(key)
            except (KeyError, ValueError, TypeError, binascii.Error):
                raise DDError(400, "seeded key %s needs base64url n and e" % kid, "JWKS")
            if "exp" in key and not is_int(key["exp"]):
                raise DDError(400, "seeded key %s: exp must be an integer" % kid, "JWKS")
            k = json.loads(json.dumps(key))
            k.setdefault("exp", int(now) + KEY_MAX_LIFETIME)
            out.append(k)
        return self._replace_jwks(c, out, now, propagate=False)

    def _replace_jwks(self, c, out, now, propagate):
        """Installs a validated key set. A key whose kid and n, e were already registered keeps the time
        it became known; any other starts its propagation delay now (or is known at once: propagate=False).
        Record silent on whether re-uploading an unchanged key restarts its delay: the emulator says no,
        because digdirator and OKD re-post the keys pods are using with every new key (DGR
        controllers/common/reconciler.go and pkg/crypto/jwks.go merge the keys of the secrets in use; OKD
        create_client_key) and OKD keeps the old key 300 s after a rotation, which would be an outage
        on every rotation if a re-post made a registered key unknown again."""
        cid = c["reg"]["client_id"]
        old = {k["kid"]: k for k in c["jwks"]["keys"]}
        since = {}
        for k in out:
            prev = old.get(k["kid"])
            same = prev is not None and prev.get("n") == k.get("n") and prev.get("e") == k.get("e")
            since[k["kid"]] = c["key_since"].get(k["kid"], 0) if same else (now if propagate else 0)
        for kid in old:
            if self.kid_owner.get(kid) == cid:
                del self.kid_owner[kid]
        for k in out:
            self.kid_owner[k["kid"]] = cid
        stamp = self.stamp()
        c["jwks"] = {"keys": out, "created": c["jwks"].get("created", stamp), "last_updated": stamp}
        c["key_since"] = since
        return json.loads(json.dumps(c["jwks"]))

    def delete_jwks(self, c):
        cid = c["reg"]["client_id"]
        for k in c["jwks"]["keys"]:
            if self.kid_owner.get(k["kid"]) == cid:
                del self.kid_owner[k["kid"]]
        stamp = self.stamp()
        c["jwks"] = {"keys": [], "created": c["jwks"].get("created", stamp), "last_updated": stamp}
        c["key_since"] = {}
        return json.loads(json.dumps(c["jwks"]))

    # -- DigDir scopes

    def seed_scope(self, spec):
        name = spec.get("name")
        owner = spec.get("owner_orgno")
        if not isinstance(name, str) or ":" not in name or not isinstance(owner, str):
            raise DDError(400, "seed scope needs name (prefix:subscope) and owner_orgno", "Scope")
        consumers = spec.get("consumers") or []
        if not isinstance(consumers, list) or not all(
            isinstance(c, dict) and isinstance(c.get("orgno"), str)
            and c.get("state", "APPROVED") in ("REQUESTED", "APPROVED", "DENIED")
            for c in consumers
        ):
            raise DDError(400, "consumers must be [{orgno, state: REQUESTED|APPROVED|DENIED}]", "Scope")
        prefix, subscope = name.split(":", 1)
        with self.lock:
            s = self.scopes.get(name)
            stamp = self.stamp()
            if s is None:
                s = self._new_scope(prefix, subscope, owner, {}, stamp)
                self.scopes[name] = s
            s["owner_orgno"] = owner
            for k in ("accessible_for_all", "active", "visibility", "at_max_age", "authorization_max_lifetime",
                      "description", "allowed_integration_types"):
                if k in spec:
                    s[k] = spec[k]
            s["last_updated"] = stamp
            for cons in consumers:
                self._set_access(name, owner, cons["orgno"], cons.get("state", "APPROVED"))
            return dict(s)

    def _new_scope(self, prefix, subscope, owner, body, stamp):
        s = {
            "name": prefix + ":" + subscope,
            "prefix": prefix,
            "subscope": subscope,
            "description": body.get("description", ""),
            "active": body.get("active", True),
            "accessible_for_all": body.get("accessible_for_all", False),
            "allowed_integration_types": body.get("allowed_integration_types", ["maskinporten"]),
            # Record: at_max_age is optional and 0 means no cap (oidc_protocol_scope.md); silent on the
            # value DigDir stores when a POST leaves it out: the emulator stores 0.
            "at_max_age": body.get("at_max_age", 0),
            "authorization_max_lifetime": body.get("authorization_max_lifetime", 0),
            "long_description": body.get("long_description", ""),
            "requires_pseudonymous_tokens": body.get("requires_pseudonymous_tokens", False),
            "requires_user_authentication": body.get("requires_user_authentication", False),
            "requires_user_consent": body.get("requires_user_consent", False),
            "token_type": body.get("token_type", "SELF_CONTAINED"),
            "visibility": body.get("visibility", "PUBLIC"),
            "owner_orgno": owner,
            "created": stamp,
            "last_updated": stamp,
        }
        if body.get("delegation_source"):
            s["delegation_source"] = body["delegation_source"]
        return s

    def _set_access(self, scope, owner, consumer, state):
        stamp = self.stamp()
        a = self.access.get((scope, consumer))
        if a is None:
            a = {"consumer_orgno": consumer, "owner_orgno": owner, "scope": scope, "state": state,
                 "created": stamp, "last_updated": stamp, "prefix": None}
            self.access[(scope, consumer)] = a
        a["state"], a["last_updated"] = state, stamp
        return dict(a)

    def validate_scope(self, body, orgno, existing=None):
        """Checks a POST (existing None) or PUT /scopes body; DDError(400) lists every problem."""
        if not isinstance(body, dict):
            raise DDError(400, "The request body must be a JSON object", "Scope")
        errs = []

        def field(name, msg):
            errs.append(("%s: %s" % (name, msg), name))

        for name in ("accessible_for_all", "active", "requires_pseudonymous_tokens", "requires_user_authentication", "requires_user_consent"):
            if name in body and not isinstance(body[name], bool):
                field(name, "must be a boolean")
        # Source: felleslosninger/docs oidc_protocol_scope.md, at_max_age "optional. If set, defines a
        # maximium allowable expires_in for access tokens having this scope ... A zero value means that
        # lifetime is based on the client setting or system default": an integer number of seconds, 0 or
        # more (live scopes at api.samarbeid.digdir.no/api/v1/scopes/all carry 3600). Record silent on an
        # upper bound: see AT_MAX_AGE_MAX. authorization_max_lifetime (same page, "authorization_max_age",
        # "set this value equal to at_max_age" for Maskinporten scopes) follows the same rule.
        for name in ("at_max_age", "authorization_max_lifetime"):
            if name in body and (not is_int(body[name]) or not 0 <= body[name] <= AT_MAX_AGE_MAX):
                field(name, "must be an integer number of seconds from 0 (no limit) to %d" % AT_MAX_AGE_MAX)
        ait = body.get("allowed_integration_types", ["maskinporten"])
        if not isinstance(ait, list) or not ait or any(t not in INTEGRATION_TYPES for t in ait):
            field("allowed_integration_types", "must be a non-empty list of integration types")
        if body.get("visibility", "PUBLIC") not in ("PUBLIC", "PRIVATE"):
            field("visibility", "must be PUBLIC or PRIVATE")
        if "description" in body and not isinstance(body["description"], str):
            field("description", "must be a string")
        if existing is None:
            # Source: felleslosninger/docs oidc_api_admin_maskinporten.md "POST /scopes | prefix*, subscope*";
            # oidc_protocol_scope.md: prefix "mandatory ... Manually assigned by Digdir", "An organization
            # may have multiple prefixes"; maskinporten_guide_apitilbyder.md "Prefix må matche det du
            # tidligere fikk tildelt". The organisation's prefixes are the control setting org_prefixes.
            prefix = body.get("prefix")
            if not isinstance(prefix, str) or not prefix:
                field("prefix", "is required")
            elif prefix not in self.settings["org_prefixes"]:
                field("prefix", "prefix %s is not assigned to organisation %s" % (prefix, orgno))
            sub = body.get("subscope")
            if not isinstance(sub, str) or not SUBSCOPE_RE.match(sub):
                field("subscope", "is required and may hold a-z, æøå, 0-9 and . _ / : -")
            # Source: oidc_protocol_scope.md, description "mandatory"; every POST example carries one.
            # (visibility is "mandatory" there too, but DigDir's own POST examples leave it out: PUBLIC.)
            desc = body.get("description")
            if not isinstance(desc, str) or not desc.strip():
                field("description", "is required")
            # DigDir derives name from prefix and subscope; digdirator sends "".
            name = body.get("name")
            if name not in (None, "") and name != "%s:%s" % (prefix, sub):
                field("name", "is derived from prefix and subscope; send it empty or leave it out")
        else:
            # Source: oidc_api_admin_maskinporten.md "Selve scope-navnet kan ikke endres".
            for name in ("prefix", "subscope"):
                if body.get(name) not in (None, "", existing[name]):
                    field(name, "cannot be changed")
        if errs:
            raise DDError(400, errs, "Scope")

    def _owned_scope(self, orgno, query):
        name = (query.get("scope") or [None])[0]
        if not name:
            raise DDError(400, [("scope: query parameter is required", "scope")], "Scope")
        s = self.scopes.get(name)
        if s is None:
            raise DDError(404, "Scope %s not found" % name, "Scope")
        if s["owner_orgno"] != orgno:
            raise DDError(403, "Scope %s is owned by another organisation" % name, "Scope")
        return s

    # -- DigDir routing

    def digdir(self, method, path, query, headers, raw):
        """Handles /api/v1/...; returns a Reply."""
        try:
            return self._digdir(method, path[len("/api/v1"):], query, headers, raw)
        except DDError as e:
            return Reply(e.status, dd_error_body(e.status, e.messages, e.object_name), headers=e.headers)

    # The admin scope each endpoint needs (any one of them). Sources: felleslosninger/docs oidc_api_admin.md
    # and maskinporten_sjolvbetjening_api.md tables: dcr.read "lese klientregistreringer", dcr.modify "endre
    # klientregistreringer", dcr.write "opprette nye klientregistreringer"; oidc_api_admin_maskinporten.md:
    # scopes.write "opprette/endre APIer, og gi/fjerne tilgang til konsumenter"; OKD maskinporten_client.py:
    # dcr.read for every GET, dcr.write for POST /clients, DELETE /clients/{id} and POST
    # /clients/{id}/jwks; digdirator PUTs, DELETEs and uploads JWKS with a token of dcr.write, dcr.read and
    # scopes.write only (DGR config default), so dcr.write serves there too.
    READ = ("idporten:dcr.read",)
    CREATE = ("idporten:dcr.write",)
    MODIFY = ("idporten:dcr.modify", "idporten:dcr.write")
    # DELETE /clients/{id} and JWKS writes: dcr.write (OKD, DGR). Record silent on dcr.modify there:
    # strict reading, not enough.
    WRITE = ("idporten:dcr.write",)
    SCOPES = ("idporten:scopes.write",)

    def _digdir(self, method, sub, query, headers, raw):
        if sub == "/delegationsources" and method == "GET":
            # Open: digdirator calls it at startup without a token (DGR pkg/config/config.go; the answer's
            # shape is its fixture controllers/common/testdata/delegationsources.json).
            stamp = "2024-01-01T00:00:00.000+00:00"
            return Reply(200, [{"name": "altinn", "issuer": "https://tt02.altinn.no/", "last_updated": stamp, "created": stamp}])
        if sub == "/scopes/all" and method == "GET":
            # Open: "Åpent endepunkt som gir liste over alle synlige scopes" (oidc_api_admin_maskinporten.md).
            want = query.get("accessible_for_all")
            with self.lock:
                out = [dict(s) for s in self.scopes.values() if s["active"] and s["visibility"] == "PUBLIC"]
            if want:
                flag = want[0].lower() == "true"
                out = [s for s in out if s["accessible_for_all"] == flag]
            return Reply(200, out)
        orgno, scopes = self.bearer(headers)
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise DDError(400, "Malformed JSON in request body")
        inactive = (query.get("inactive") or ["false"])[0].lower() == "true"
        with self.lock:
            m = re.fullmatch(r"/clients(?:/([^/]+)(/jwks)?)?", sub)
            if m:
                cid, jwks = m.group(1), m.group(2)
                if cid is None and method == "GET":
                    self.need(scopes, *self.READ)
                    # Not paged, every client of the organisation: felleslosninger/docs oidc_api_admin.md and
                    # oidc_api_admin_maskinporten.md document no paging or filter for GET /clients, and
                    # digdirator reads one answer whole (DGR pkg/digdir/client.go); inferred from that
                    # silence. Joined from each client's cached JSON, so 10,000 clients cost one join, not
                    # 10,000 dumps.
                    parts = [c["json"] for c in self.clients.values()
                             if c["orgno"] == orgno and (inactive or c["reg"]["active"])]
                    return Reply(200, b"[" + b",".join(parts) + b"]")
                if cid is None and method == "POST":
                    self.need(scopes, *self.CREATE)
                    reg = self.validate_client(body, orgno)
                    return Reply(201, self.client_view(self.create_client(reg, orgno)))
                if cid is not None and not jwks and method == "GET":
                    self.need(scopes, *self.READ)
                    return Reply(200, self.client_view(self._client(orgno, cid)))
                if cid is not None and not jwks and method == "PUT":
                    self.need(scopes, *self.MODIFY)
                    c = self._client(orgno, cid)
                    reg = self.validate_client(body, orgno, c)
                    for k in ("client_id", "client_orgno", "created", "active"):
                        reg[k] = c["reg"][k]
                    reg["last_updated"] = self.stamp()
                    c["reg"] = reg
                    self._stored(c)
                    return Reply(200, self.client_view(c))
                if cid is not None and not jwks and method == "DELETE":
                    self.need(scopes, *self.WRITE)
                    c = self._client(orgno, cid)
                    c["reg"]["active"] = False
                    c["reg"]["last_updated"] = self.stamp()
                    self._stored(c)
                    return Reply(200, self.client_view(c))
                if jwks and method == "GET":
                    self.need(scopes, *self.READ)
                    return Reply(200, json.loads(json.dumps(self._client(orgno, cid)["jwks"])))
                if jwks and method in ("POST", "PUT"):
                    self.need(scopes, *self.WRITE)
                    c = self._client(orgno, cid)
                    if not isinstance(body, dict) or "keys" not in body:
                        raise DDError(400, [("keys: is required", "keys")], "JWKS")
                    return Reply(200 if method == "PUT" else 201, self.set_jwks(c, body["keys"]))
                if jwks and method == "DELETE":
                    self.need(scopes, *self.WRITE)
                    return Reply(200, self.delete_jwks(self._client(orgno, cid)))
                raise DDError(405, "Method %s not allowed" % method)

            if sub == "/scopes/access/all" and method == "GET":
                # Record silent on the scope this needs. A consumer reads its own accesses here, and
                # dcr.read is the read scope every consumer's admin client holds: strict reading,
                # dcr.read and only that (scopes.write is an API provider's scope).
                self.need(scopes, *self.READ)
                return Reply(200, [dict(a) for a in self.access.values() if a["consumer_orgno"] == orgno])
            m = re.fullmatch(r"/scopes/access/([^/]+)", sub)
            if m and method in ("PUT", "DELETE"):
                self.need(scopes, *self.SCOPES)
                s = self._owned_scope(orgno, query)
                consumer = m.group(1)
                if not orgno_valid(consumer):
                    raise DDError(400, [("consumer_orgno: %s is not a valid organisation number" % consumer, "consumer_orgno")], "Access")
                # DigDir answers 400 for some consumers: digdirator skips a consumer whose grant got 400 and
                # sets condition InvalidExposedScopesConsumers (DGR bf69402). Which ones is DigDir's business
                # (record silent), so the control setting refused_consumers decides.
                if method == "PUT" and consumer in self.settings["refused_consumers"]:
                    raise DDError(400, [("consumer_orgno: organisation %s cannot be given access" % consumer, "consumer_orgno")], "Access")
                if method == "DELETE" and (s["name"], consumer) not in self.access:
                    raise DDError(404, "No access for %s to %s" % (consumer, s["name"]), "Access")
                state = "APPROVED" if method == "PUT" else "DENIED"
                return Reply(200, self._set_access(s["name"], orgno, consumer, state))
            if sub == "/scopes/access" and method == "GET":
                self.need(scopes, *self.SCOPES)
                s = self._owned_scope(orgno, query)
                return Reply(200, [dict(a) for (n, _), a in self.access.items() if n == s["name"]])
            if sub == "/scopes":
                # GET /scopes is a "Beskyttet endepunkt" listing the organisation's own scopes: record silent
                # on its scope, strict reading scopes.write like every other /scopes call.
                self.need(scopes, *self.SCOPES)
                if method == "GET" and "scope" in query:
                    name = query["scope"][0]
                    s = self.scopes.get(name)
                    if s is None or (s["owner_orgno"] != orgno and not (s["active"] and s["visibility"] == "PUBLIC")):
                        raise DDError(404, "Scope %s not found" % name, "Scope")
                    return Reply(200, dict(s))
                if method == "GET":
                    return Reply(200, [dict(s) for s in self.scopes.values()
                               if s["owner_orgno"] == orgno and (inactive or s["active"])])
                if method == "POST":
                    self.validate_scope(body, orgno)
                    name = body["prefix"] + ":" + body["subscope"]
                    s = self.scopes.get(name)
                    if s is not None and s["active"]:
                        raise DDError(400, [("scope %s already exists" % name, "subscope")], "Scope")
                    if s is not None:
                        # Source: oidc_api_admin_maskinporten.md "Deaktiverte entiteter vil ikke reaktiveres
                        # ved POST og man får 409 Conflict isteden."
                        raise DDError(409, "Scope %s exists but is inactive: reactivate it with PUT" % name, "Scope")
                    s = self._new_scope(body["prefix"], body["subscope"], orgno, body, self.stamp())
                    self.scopes[name] = s
                    return Reply(201, dict(s))
                if method == "PUT":
                    s = self._owned_scope(orgno, query)
                    self.validate_scope(body, orgno, s)
                    for k in ("description", "active", "accessible_for_all", "allowed_integration_types", "at_max_age",
                              "authorization_max_lifetime", "long_description", "requires_pseudonymous_tokens",
                              "requires_user_authentication", "requires_user_consent", "token_type", "visibility",
                              "delegation_source"):
                        if k in body:
                            s[k] = body[k]
                    s["last_updated"] = self.stamp()
                    return Reply(200, dict(s))
                if method == "DELETE":
                    s = self._owned_scope(orgno, query)
                    s["active"] = False
                    s["last_updated"] = self.stamp()
                    return Reply(200, dict(s))
                raise DDError(405, "Method %s not allowed" % method, "Scope")
        raise DDError(404, "No such endpoint: %s %s" % (method, sub), "Request")

    # -- control API

    def control(self, method, path, query, raw):
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            return Reply(400, {"error": "malformed JSON"})
        try:
            return self._control(method, path[len("/_emulator"):], query, body)
        except DDError as e:
            return Reply(e.status, {"error": str(e)})

    def all_clients_view(self, inactive):
        return [self.client_dump(c) for c in self.clients.values() if inactive or c["reg"]["active"]]

    def client_dump(self, c):
        out = self.client_view(c)
        out["orgno"] = c["orgno"]
        out["jwks"] = json.loads(json.dumps(c["jwks"]))
        out["keys"] = out["jwks"]["keys"]
        return out

    # A client made by hand (control API): these values unless the spec says otherwise.
    HAND_MADE = {
        "client_name": "made by hand",
        "description": "made by hand",
        "integration_type": "maskinporten",
        "application_type": "web",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": [JWT_BEARER],
        "scopes": [],
        "access_token_lifetime": 120,
        "authorization_lifetime": 0,
        "refresh_token_lifetime": 0,
        "refresh_token_usage": "ONETIME",
        "frontchannel_logout_session_required": False,
        "redirect_uris": [],
        "post_logout_redirect_uris": [],
        "sso_disabled": False,
    }

    def _hand_made(self, body, extra=()):
        """A control-API client spec split into (registration, orgno, keys, active); unknown fields refused."""
        if not isinstance(body, dict):
            raise DDError(400, "a client spec must be an object")
        spec = dict(body)
        unknown = set(spec) - CLIENT_FIELDS - {"orgno", "jwks", "active"} - set(extra)
        if unknown:
            raise DDError(400, "unknown client fields: %s" % ", ".join(sorted(unknown)))
        orgno = spec.pop("orgno", None) or self.orgno
        if not isinstance(orgno, str) or not ORGNO_RE.match(orgno):
            raise DDError(400, "orgno must be nine digits")
        keys = spec.pop("jwks", None) or []
        active = spec.pop("active", True)
        for k in extra:
            spec.pop(k, None)
        reg = dict(self.HAND_MADE)
        reg.update(spec)
        return reg, orgno, keys, bool(active)

    def bulk_clients(self, body):
        """POST /_emulator/clients/bulk {"count": N, "description": "bulk:ns:app-{i}", ...}: N hand-made
        clients at once (no keys), description formatted with i = 0..N-1, for listings of realistic size."""
        count = body.get("count") if isinstance(body, dict) else None
        if not is_int(count) or not 1 <= count <= 100000:
            raise DDError(400, "count must be an integer from 1 to 100000")
        reg, orgno, keys, active = self._hand_made(body, extra=("count",))
        if keys:
            raise DDError(400, "bulk clients have no keys")
        template = reg["description"]
        if not isinstance(template, str) or "{i}" not in template:
            raise DDError(400, "description must be a template holding {i}")
        stamp = self.stamp()
        ids = []
        for i in range(count):
            r = dict(reg)
            r["description"] = template.replace("{i}", str(i))
            c = self.create_client(r, orgno, known_since=0, stamp=stamp)
            if not active:
                c["reg"]["active"] = False
                self._stored(c)
            ids.append(c["reg"]["client_id"])
        return {"count": count, "client_ids": ids}

    def update_settings(self, body):
        """Checks every setting before applying any; org_prefix (one string) is kept as an alias."""
        if not isinstance(body, dict):
            raise DDError(400, "settings must be an object")
        body = dict(body)
        if "org_prefix" in body:
            if "org_prefixes" in body:
                raise DDError(400, "give org_prefixes or org_prefix, not both")
            one = body.pop("org_prefix")
            if not isinstance(one, str):
                raise DDError(400, "org_prefix must be a string")
            body["org_prefixes"] = [one]
        unknown = set(body) - set(DEFAULT_SETTINGS)
        if unknown:
            raise DDError(400, "unknown settings: %s" % ", ".join(sorted(unknown)))
        new = {}
        try:
            for k, v in body.items():
                new[k] = check_setting(k, v)
        except ValueError as e:
            raise DDError(400, str(e))
        self.settings.update(new)
        return dict(self.settings)

    def _control(self, method, sub, query, body):
        with self.lock:
            if sub == "/reset" and method == "POST":
                self.reset()
                return Reply(200, {"ok": True})
            if sub == "/scopes" and method == "POST":
                return Reply(200, self.seed_scope(body))
            if sub == "/scopes" and method == "GET":
                return Reply(200, {"scopes": list(self.scopes.values()), "access": list(self.access.values())})
            if sub == "/clients" and method == "POST":
                reg, orgno, keys, active = self._hand_made(body)
                c = self.create_client(reg, orgno, jwks=keys, known_since=0)
                if not active:
                    c["reg"]["active"] = False
                    self._stored(c)
                return Reply(200, self.client_dump(c))
            if sub == "/clients/bulk" and method == "POST":
                return Reply(200, self.bulk_clients(body))
            if sub == "/clients" and method == "GET":
                inactive = (query.get("inactive") or ["false"])[0].lower() == "true"
                return Reply(200, self.all_clients_view(inactive))
            m = re.fullmatch(r"/clients/([^/]+)", sub)
            if m and method == "GET":
                c = self.clients.get(m.group(1))
                if c is None:
                    return Reply(404, {"error": "no such client"})
                return Reply(200, self.client_dump(c))
            if sub == "/faults" and method == "POST":
                return Reply(200, self.add_fault(body))
            if sub == "/faults" and method == "DELETE":
                self.faults = []
                return Reply(200, {"ok": True})
            if sub == "/faults" and method == "GET":
                return Reply(200, [{k: v for k, v in f.items() if k != "path_re"} for f in self.faults])
            if sub == "/bytes" and method == "GET":
                return Reply(200, dict(self.bytes))
            if sub == "/counts" and method == "GET":
                return Reply(200, dict(self.counts))
            if sub == "/log" and method == "GET":
                return Reply(200, list(self.log))
            if sub == "/settings" and method == "POST":
                return Reply(200, self.update_settings(body))
            if sub == "/settings" and method == "GET":
                return Reply(200, dict(self.settings))
            if sub == "/admin-token" and method == "GET":
                self.counts["control:admin-token"] = self.counts.get("control:admin-token", 0) + 1
                return Reply(200, self.admin_token((query.get("scope") or [None])[0]))
        return Reply(404, {"error": "no such control endpoint: %s %s" % (method, sub)})

    # -- the request entry point for the two emulated services

    def route_template(self, method, path):
        """The path with ids templated, for counts: /api/v1/clients/{id}/jwks."""
        path = re.sub(r"^/api/v1/clients/[^/]+", "/api/v1/clients/{id}", path)
        path = re.sub(r"^/api/v1/scopes/access/(?!all$)[^/]+$", "/api/v1/scopes/access/{orgno}", path)
        return "%s %s" % (method, path)

    def handle(self, method, path, query, headers, raw):
        if path == "/.well-known/oauth-authorization-server" and method == "GET":
            return Reply(200, self.metadata())
        if path == "/jwk" and method == "GET":
            return Reply(200, self.m.public_jwks())
        if path == "/token":
            if method != "POST":
                return Reply(405, {"error": "invalid_request", "error_description": "use POST"}, headers={"Allow": "POST"})
            return self.token(headers, raw)
        if path == "/api/v1" or path.startswith("/api/v1/"):
            return self.digdir(method, path, query, headers, raw)
        return Reply(404, {"error": "not_found", "error_description": "no such endpoint"})


# ---------------------------------------------------------------------------
# HTTP plumbing.


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "maskinporten-emulator/1"
    timeout = 120

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    raise ValueError("body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def dispatch(self):
        try:
            self._dispatch()
        except (OSError, ssl.SSLError):
            self.close_connection = True
        except Exception:
            # A bug here must still be an answer, and visible in the emulator's stderr.
            import traceback

            traceback.print_exc()
            self.close_connection = True
            self.send(Reply(500, {"error": "server_error", "error_description": "emulator bug, see its stderr"}))

    def _dispatch(self):
        svc = self.server.svc
        start = time.time()
        method = self.command
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query, keep_blank_values=True)
        try:
            raw = self.read_body()
        except ValueError:
            self.close_connection = True
            self.send(Reply(413, {"error": "request body too large or malformed"}))
            return
        if path == "/_emulator" or path.startswith("/_emulator/"):
            self.send(svc.control(method, path, query, raw))
            return

        svc.count(svc.route_template(method, path))
        fault = svc.take_fault(method, path)
        if fault and fault["delay"] > 0:
            time.sleep(fault["delay"])
        if fault and fault["drop"]:
            svc.record(method, self.path, 0, start)
            self.abort()
            return
        if fault and fault["status"] is not None:
            reply = svc.fault_reply(fault, path)
        else:
            reply = svc.handle(method, path, query, self.headers, raw)
        truncate = False
        if fault:
            if fault["malformed"]:
                reply.body = b'{"malformed": [tru'
                reply.content_type = reply.content_type or "application/json"
            if fault["content_type"] is not None:
                reply.content_type = fault["content_type"]
            if fault["retry_after"] is not None:
                reply.headers["Retry-After"] = str(fault["retry_after"])
            truncate = fault["truncate"]
        svc.record(method, self.path, reply.status, start)
        svc.count_bytes(svc.route_template(method, path), len(reply.body))
        self.send(reply, truncate=truncate)

    def send(self, reply, truncate=False):
        body = reply.body
        self.send_response(reply.status)
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if truncate:
            if len(body) < 2:
                body = b'{"truncated": true}'
            self.send_header("Content-Length", str(len(body) + 64))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.abort()
            return
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: two small writes meet Nagle and delayed ACKs (40 ms).
        if self.command != "HEAD":
            self._headers_buffer.append(b"\r\n" + body)
            self.flush_headers()
        else:
            self.end_headers()

    def abort(self):
        """Closes the connection without (the rest of) an answer."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops connections a burst opens at once,
    # and the client's SYN retry adds a second to each: DigDir's does not.
    request_queue_size = 128

    def __init__(self, addr, svc, tls_context=None):
        self.svc = svc
        self.tls_context = tls_context
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_context is not None:
            # The handshake runs in the connection's own thread (Handler.setup), never in accept.
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS (tests only)")
    ap.add_argument("--propagation-delay", type=float, default=0.0)
    ap.add_argument("--org", default="889640782")
    args = ap.parse_args(argv)
    if not orgno_valid(args.org):
        ap.error("--org must be a valid 9-digit organisation number")
    try:
        check_setting("propagation_delay", args.propagation_delay)
    except ValueError as e:
        ap.error(str(e))

    os.makedirs(args.state_dir, exist_ok=True)
    material = Material(args.org)
    files = material.write(args.state_dir)
    tls = None
    if not args.http:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(files["server_cert"], files["server_key"])
    server = Server((args.host, args.port), None, tls)
    port = server.server_address[1]
    host = "[%s]" % args.host if ":" in args.host else args.host
    base = "%s://%s:%d" % ("http" if args.http else "https", host, port)
    svc = Service(material, args.org, base, args.propagation_delay)
    server.svc = svc

    info = {
        "base_url": base,
        "issuer": svc.issuer,
        "well_known_url": base + "/.well-known/oauth-authorization-server",
        "digdir_url": base,
        "token_endpoint": base + "/token",
        "jwks_uri": base + "/jwk",
        "control_url": base + "/_emulator",
        "ca_file": files["ca_file"],
        "business_ca_file": files["business_ca_file"],
        "admin_client_id": svc.admin_client_id,
        "admin_key_file": files["admin_key_file"],
        "admin_cert_file": files["admin_cert_file"],
        "admin_kid": material.admin_kid,
        "org_number": args.org,
        "pid": os.getpid(),
    }
    line = json.dumps(info)
    with open(os.path.join(args.state_dir, "emulator.json.tmp"), "w") as f:
        f.write(line + "\n")
    os.replace(os.path.join(args.state_dir, "emulator.json.tmp"), os.path.join(args.state_dir, "emulator.json"))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
