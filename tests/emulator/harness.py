"""Test-side handle on the emulator process: start/stop, the control API, an
HTTPS helper that trusts the emulator's CA (stdlib only), and helpers that
sign JWT grants with jwcrypto.

    emu = Emulator(state_dir).start()
    emu.add_client(scopes=["nav:test/api"], jwks=[public_jwk(key)])
    r = emu.token(client_grant(emu, key, client_id, "nav:test/api"))
    emu.stop()
"""

import base64
import http.client
import json
import os
import select
import ssl
import subprocess
import sys
import time
import uuid
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jwt

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR = os.path.join(HERE, "emulator.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:300])


class Emulator:
    """One emulator process. opts: propagation_delay, org, port, host."""

    def __init__(self, state_dir, http=False, **opts):
        self.state_dir = state_dir
        self.http = http
        self.opts = opts
        self.proc = None
        self.info = None
        self._ctx = None
        self._stderr = None

    # -- process

    def start(self, timeout=10.0):
        os.makedirs(self.state_dir, exist_ok=True)
        cmd = [PYTHON, EMULATOR, "--state-dir", self.state_dir]
        if self.http:
            cmd.append("--http")
        for k, v in self.opts.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        self._stderr = open(os.path.join(self.state_dir, "emulator.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("emulator did not start: %s" % self.stderr_tail())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        self.info = json.loads(line.decode())
        if not self.http:
            self._ctx = ssl.create_default_context(cafile=self.info["ca_file"])
        return self

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, n=2000):
        try:
            with open(os.path.join(self.state_dir, "emulator.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP

    @property
    def base_url(self):
        return self.info["base_url"]

    @property
    def issuer(self):
        return self.info["issuer"]

    def ssl_context(self):
        return self._ctx

    def connection(self, timeout=10.0):
        u = urlsplit(self.base_url)
        if self.http:
            return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        return http.client.HTTPSConnection(u.hostname, u.port, context=self._ctx, timeout=timeout)

    def request(self, method, path, body=None, json_body=None, form=None, headers=None, token=None, timeout=10.0):
        """One request on a fresh connection; path is relative to base_url. Never raises on HTTP status."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            headers.setdefault("Content-Type", "application/json")
        elif form is not None:
            body = urlencode(form)
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if isinstance(body, str):
            body = body.encode()
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def control(self, method, path, body=None):
        r = self.request(method, "/_emulator" + path, json_body=body)
        if r.status != 200:
            raise RuntimeError("control %s %s: %r" % (method, path, r))
        return r.json()

    # -- control API

    def reset(self):
        if not self.alive():
            raise RuntimeError("emulator is not running: %s" % self.stderr_tail())
        return self.control("POST", "/reset")

    def seed_scope(self, name, owner_orgno, accessible_for_all=False, consumers=(), **extra):
        """consumers: orgnos (APPROVED) or {"orgno","state"} dicts."""
        cons = [c if isinstance(c, dict) else {"orgno": c, "state": "APPROVED"} for c in consumers]
        body = {"name": name, "owner_orgno": owner_orgno, "accessible_for_all": accessible_for_all, "consumers": cons}
        body.update(extra)
        return self.control("POST", "/scopes", body)

    def add_client(self, **fields):
        """Creates a client directly (as if made by hand); jwks=[public JWKs], orgno=... optional."""
        return self.control("POST", "/clients", fields)

    def bulk_clients(self, count, description="bulk:ns:app-{i}", **fields):
        """Seeds count hand-made clients at once ({i} in description is 0..count-1); returns their ids."""
        body = dict(fields, count=count, description=description)
        return self.control("POST", "/clients/bulk", body)["client_ids"]

    def clients(self, inactive=False):
        return self.control("GET", "/clients" + ("?inactive=true" if inactive else ""))

    def client(self, client_id):
        return self.control("GET", "/clients/" + client_id)

    def fault(self, **kw):
        return self.control("POST", "/faults", kw)["id"]

    def clear_faults(self):
        return self.control("DELETE", "/faults")

    def counts(self):
        return self.control("GET", "/counts")

    def bytes_sent(self):
        """Body bytes the emulator sent, per route ("GET /api/v1/clients": n)."""
        return self.control("GET", "/bytes")

    def log(self):
        return self.control("GET", "/log")

    def settings(self, **kw):
        return self.control("POST", "/settings", kw)

    def admin_token(self, scope=None):
        """An admin access token with scope (default: every scope the admin client holds)."""
        path = "/admin-token" + ("?" + urlencode({"scope": scope}) if scope is not None else "")
        return self.control("GET", path)["access_token"]

    # -- Maskinporten and DigDir as a client sees them

    def token(self, assertion, **extra_form):
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        form.update(extra_form)
        return self.request("POST", "/token", form=form)

    def digdir(self, method, path, body=None, token=None):
        """A DigDir admin call under /api/v1; token defaults to a fresh admin token."""
        if token is None:
            token = self.admin_token()
        headers = {"Content-Type": "application/json"}
        return self.request(method, "/api/v1" + path, body=json.dumps(body) if body is not None else None,
                            headers=headers, token=token)

    def admin_key(self):
        with open(self.info["admin_key_file"], "rb") as f:
            return jwk.JWK.from_pem(f.read())

    def admin_chain_x5c(self):
        with open(self.info["admin_cert_file"], "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read()) if hasattr(x509, "load_pem_x509_certificates") \
                else _load_pem_chain(f.read())
        return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]

    def admin_grant(self, scope="idporten:dcr.read idporten:dcr.write idporten:scopes.write", header=None, **claims):
        """A grant for the admin client signed with its business certificate key (x5c header)."""
        h = {"alg": "RS256", "typ": "JWT", "x5c": self.admin_chain_x5c()}
        h.update(header or {})
        c = grant_claims(self.info["admin_client_id"], self.issuer, scope)
        c.update(claims)
        return sign(self.admin_key(), h, c)


def _load_pem_chain(data):
    out = []
    marker = b"-----END CERTIFICATE-----"
    for part in data.split(marker):
        if b"-----BEGIN CERTIFICATE-----" in part:
            out.append(x509.load_pem_x509_certificate(part + marker))
    return out


# -- grants


def new_key(kid=None, size=2048):
    """A private RSA JWK (jwcrypto) with kid, use and alg set."""
    key = jwk.JWK.generate(kty="RSA", size=size)
    return jwk.JWK(**dict(json.loads(key.export_private()), kid=kid or str(uuid.uuid4()), use="sig", alg="RS256"))


def public_jwk(key, **extra):
    """The public JWK dict of key as DigDir wants it: kty, e, use, kid, alg, n (plus extra)."""
    d = json.loads(key.export_public())
    d.setdefault("use", "sig")
    d.setdefault("alg", "RS256")
    d.update(extra)
    return d


def grant_claims(client_id, audience, scope, lifetime=30, now=None):
    now = int(time.time() if now is None else now)
    return {"aud": audience, "iss": client_id, "scope": scope, "iat": now, "exp": now + lifetime,
            "jti": str(uuid.uuid4())}


def sign(key, header, claims):
    t = jwt.JWT(header=header, claims=claims)
    t.make_signed_token(key)
    return t.serialize()


def client_grant(emu, key, client_id, scope, header=None, **claims):
    """A grant for an app client signed with key, kid in the header."""
    h = {"alg": "RS256", "typ": "JWT", "kid": key["kid"]}
    h.update(header or {})
    c = grant_claims(client_id, emu.issuer, scope)
    c.update(claims)
    return sign(key, h, c)


def decode_jwt(token):
    """Header and claims of a compact JWT, without verifying it (for assertions in tests)."""
    def part(s):
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    h, c, _ = token.split(".")
    return part(h), part(c)
