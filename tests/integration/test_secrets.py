"""What the provider keeps secret: socket and file modes, a readable seed file
refused, and no key material, seed, JWT, `secrets` value or pod token in the
provider's debug log or in any gRPC error detail of a full flow."""

import base64
import json
import os
import re
import stat
import subprocess

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant
from provider_harness import (SEED, SLOW, Provider, cli, files_of, modes_of, upstream_args,
                              write_seed)

SCOPE = "skatteetaten:testapi"
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.")
PRIVATE = ("d", "p", "q", "dp", "dq", "qi")


def test_socket_is_0600(emulator, tmp_path):
    with Provider(emulator, tmp_path) as p:
        st = os.stat(p.socket)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600


@pytest.mark.parametrize("permission,param,mode", [("420", None, 0o644), ("384", None, 0o600),
                                                   ("420", "0440", 0o440),
                                                   ("420", "0400", 0o400)])
def test_mounted_file_modes_are_exact(emulator, tmp_path, permission, param, mode):
    kubelet = tmp_path / "kubelet"
    target = kubelet / "pods" / "u" / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
    target.mkdir(parents=True)
    params = {"filePermission": param} if param else {}
    with Provider(emulator, tmp_path) as p:
        resp = p.mount("team-s", "app", scopes=SCOPE, params=params, permission=permission)
        assert set(modes_of(resp).values()) == {mode}
    old = os.umask(0o077)  # the provider's own umask must not matter either
    try:
        w = Provider(emulator, tmp_path, name="w",
                     args=["--write-mode", "provider", "--kubelet-dir", str(kubelet)]).start()
    finally:
        os.umask(old)
    try:
        w.mount("team-s", "app", scopes=SCOPE, params=params, permission=permission,
                target_path=str(target))
        data = target / os.readlink(str(target / "..data"))
        for name in os.listdir(str(data)):
            assert stat.S_IMODE(os.stat(str(data / name)).st_mode) == mode, name
    finally:
        w.stop()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_a_readable_seed_file_is_refused(emulator, tmp_path, mode):
    seed = write_seed(str(tmp_path / "seed"), mode=mode)
    cmd = cli("serve", "--socket", tmp_path / "s.sock") + upstream_args(emulator, seed)
    r = subprocess.run(cmd, capture_output=True, timeout=20 * SLOW)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "seed" in err and ("0600" in err or "mode" in err or "readable" in err), err
    assert not os.path.exists(str(tmp_path / "s.sock"))
    assert SEED.hex() not in err


def secrets_in(text, needles):
    return [name for name, value in needles.items() if value and value in text]


def test_no_secret_reaches_logs_or_error_details(emulator, tmp_path):
    secret_value = "pa55w0rd-in-the-secrets-field-0123456789"
    pod_token = "eyJhbGciOiJSUzI1NiIsImtpZCI6InBvZCJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln"
    secrets = json.dumps({"password": secret_value})
    sa_tokens = json.dumps({"api": {"token": pod_token, "expirationTimestamp": "x"}})
    extra = {"csi.storage.k8s.io/serviceAccount.tokens": sa_tokens}
    details = []

    def failing(p, *a, **kw):
        with pytest.raises(grpc.RpcError) as e:
            p.mount(*a, **kw)
        details.append(e.value.details() or "")

    p = Provider(emulator, tmp_path, args=["--request-timeout", "2s", "--mount-timeout", "8s"])
    p.start()
    try:
        handed = []
        for app in ("app-a", "app-b"):
            resp = p.mount("team-s", app, scopes=SCOPE, params=extra, secrets=secrets)
            handed.append(files_of(resp))
        # Every kind of failure once, each carrying the secrets and the pod's token.
        failing(p, "team-s", "default", params=extra, secrets=secrets)
        failing(p, "team-s", "app-a", scopes="folkeregister:deling/offentligutenhjemmel",
                params=extra, secrets=secrets)
        failing(p, "team-s", "app-c", scopes="bad scope!", params=extra, secrets=secrets)
        failing(p, "team-s", "app-c", scopes=SCOPE, params=extra, secrets="{" + secret_value)
        emulator.fault(path="^/api/v1/", status=500, body={"token": pod_token,
                                                           "echo": secret_value})
        failing(p, "team-s", "app-d", scopes=SCOPE, params=extra, secrets=secrets, timeout=6)
        emulator.clear_faults()
        emulator.fault(path="^/api/v1/clients$", method="GET", malformed=True)
        failing(p, "team-s", "app-e", scopes=SCOPE, params=extra, secrets=secrets, timeout=6)
        emulator.clear_faults()
        emulator.settings(revoke_admin=True, admin_token_lifetime=1)
        failing(p, "team-s", "app-f", scopes=SCOPE, params=extra, secrets=secrets, timeout=6)
        emulator.settings(revoke_admin=False)
        # The keys work: the flow is real, not a string of failures.
        for files in handed:
            key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
            r = emulator.token(client_grant(emulator, key, files["MASKINPORTEN_CLIENT_ID"],
                                            SCOPE))
            assert r.status == 200
    finally:
        p.stop()

    needles = {"secrets value": secret_value, "pod token": pod_token,
               "pod token payload": pod_token.split(".")[1],
               "seed hex": SEED.hex(), "seed base64": base64.b64encode(SEED).decode(),
               "seed base64url": base64.urlsafe_b64encode(SEED).decode().rstrip("=")}
    for i, files in enumerate(handed):
        key = json.loads(files["MASKINPORTEN_CLIENT_JWK"])
        for m in PRIVATE:
            needles["key %d %s" % (i, m)] = key[m]
        needles["key %d whole JWK" % i] = files["MASKINPORTEN_CLIENT_JWK"]
    with open(p.log_path, "rb") as f:
        raw = f.read()
    logs = raw.decode(errors="replace")
    assert "--log-level" in p.command() and "debug" in p.command()
    assert logs.count('"msg":"mount') >= 9, logs  # every Mount logged, ok or failed
    assert SEED not in raw
    assert secrets_in(logs, needles) == []
    assert JWT_RE.findall(logs) == []
    assert len(details) == 7 and all(d.startswith("maskinporten: ") for d in details), details
    for d in details:
        assert secrets_in(d, needles) == [], d
        assert JWT_RE.findall(d) == [], d
