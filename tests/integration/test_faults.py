"""Faults at DigDir and Maskinporten, injected by the emulator while the real
`serve` binary answers Mounts. For every fault: warm Mounts keep succeeding
with the same files, cold Mounts fail within their deadline with a message
naming the pod, the client and what failed, no client is ever created twice,
the key handed out before the fault still gets a token afterwards, and the
same cold Mount succeeds once the fault clears. A table of every Mount is
printed at the end of the module; its "lost" column must be 0."""

import collections
import json
import time

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant
from provider_harness import WRAPPER, Provider, files_of

SCOPE = "skatteetaten:testapi"
NS = "team-f"
# Under valgrind a cold Mount's own work (two key derivations) takes seconds, so the
# deadlines stretch; the per-request timeouts stay, since the faults' delays are set
# against them.
STRETCH = 2.5 if WRAPPER else 1.0
PROVIDER_ARGS = ["--request-timeout", "2s", "--connect-timeout", "1s", "--mount-timeout",
                 "%dms" % (10000 * STRETCH)]
COLD_TIMEOUT = 6.0 * STRETCH  # the driver's deadline for a cold Mount during a fault
DIGDIR = "^/api/v1/"
TOKEN = "^/token$"
METADATA = "^/.well-known/"

# name: (emulator faults, what the cold Mount during the fault must do: "fail" clearly
#        or "either" fail clearly or succeed, a word its error must contain)
FAULTS = {
    "digdir 500": ([dict(path=DIGDIR, status=500)], "fail", "HTTP 500"),
    "digdir 502": ([dict(path=DIGDIR, status=502)], "fail", "HTTP 502"),
    "digdir 503": ([dict(path=DIGDIR, status=503)], "fail", "HTTP 503"),
    "digdir 429 Retry-After 1": ([dict(path=DIGDIR, status=429, retry_after=1)], "fail",
                                 "429"),
    "digdir 429 Retry-After 600": ([dict(path=DIGDIR, status=429, retry_after=600)], "fail",
                                   "429"),
    "digdir slow 3s": ([dict(path=DIGDIR, delay=3)], "fail", "digdir"),
    "digdir drops connections": ([dict(path=DIGDIR, drop=True)], "fail", "digdir"),
    "digdir truncated body": ([dict(path=DIGDIR, truncate=True)], "fail", "digdir"),
    "digdir malformed JSON": ([dict(path=DIGDIR, malformed=True)], "fail", "digdir"),
    "digdir text/html": ([dict(path=DIGDIR, content_type="text/html")], "fail", "digdir"),
    "digdir 503 half the time": ([dict(path=DIGDIR, status=503, fraction=0.5)], "either",
                                 "503"),
    "create answered 500": ([dict(method="POST", path="^/api/v1/clients$", status=500)],
                            "fail", "500"),
    "create done, answer truncated": (
        [dict(method="POST", path="^/api/v1/clients$", truncate=True)], "either", "digdir"),
    "create done, answer dropped after 3s": (
        [dict(method="POST", path="^/api/v1/clients$", delay=3, truncate=True)], "either",
        "digdir"),
    "create slow once": ([dict(method="POST", path="^/api/v1/clients$", delay=3, count=1)],
                         "either", "digdir"),
    "jwks upload 500": ([dict(method="POST", path="/jwks$", status=500)], "fail", "500"),
    "jwks upload done, answer truncated": (
        [dict(method="POST", path="/jwks$", truncate=True)], "fail", "jwks"),
    "jwks upload answer malformed": ([dict(method="POST", path="/jwks$", malformed=True)],
                                     "fail", "jwks"),
    "token 500": ([dict(path=TOKEN, status=500)], "fail", "500"),
    "token 503": ([dict(path=TOKEN, status=503)], "fail", "503"),
    "token 429 Retry-After 1": ([dict(path=TOKEN, status=429, retry_after=1)], "fail", "429"),
    "token slow 3s": ([dict(path=TOKEN, delay=3)], "fail", "token"),
    "token drops connections": ([dict(path=TOKEN, drop=True)], "fail", "token"),
    "token truncated body": ([dict(path=TOKEN, truncate=True)], "fail", "token"),
    "token malformed JSON": ([dict(path=TOKEN, malformed=True)], "fail", "token"),
    "token text/plain": ([dict(path=TOKEN, content_type="text/plain")], "fail", "not JSON"),
    "metadata 503": ([dict(path=METADATA, status=503)], "fail", "metadata"),
    "metadata malformed JSON": ([dict(path=METADATA, malformed=True)], "fail", "metadata"),
    "metadata text/html": ([dict(path=METADATA, content_type="text/html")], "fail",
                           "metadata"),
}

# Faults at the token endpoint only bite when the cached admin token needs a refresh.
SHORT_ADMIN_TOKEN = {k for k in FAULTS if k.startswith("token ")}
# The metadata document is fetched once: these faults hit a fresh provider.
FRESH = {k for k in FAULTS if k.startswith("metadata ")}

Row = collections.namedtuple("Row", "attempted succeeded failed_expected lost")
TABLE = collections.OrderedDict()


def record(fault, outcome):
    r = TABLE.get(fault, Row(0, 0, 0, 0))
    TABLE[fault] = Row(r.attempted + 1, r.succeeded + (outcome == "ok"),
                       r.failed_expected + (outcome == "failed"), r.lost + (outcome == "lost"))


@pytest.fixture(scope="module", autouse=True)
def fault_table(request):
    yield TABLE
    if not TABLE:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    out = request.config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        for line in table_lines():
            out.write_line(line)


def table_lines():
    head = "%-40s %9s %9s %9s %5s" % ("fault", "attempted", "succeeded", "failed-ok", "lost")
    lines = ["", "Mounts under injected faults", head, "-" * len(head)]
    total = Row(0, 0, 0, 0)
    for name, r in TABLE.items():
        lines.append("%-40s %9d %9d %9d %5d" % ((name,) + tuple(r)))
        total = Row(*(a + b for a, b in zip(total, r)))
    lines.append("-" * len(head))
    lines.append("%-40s %9d %9d %9d %5d" % (("%d faults" % len(TABLE),) + tuple(total)))
    return lines


def get_token(emu, files):
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, files["MASKINPORTEN_CLIENT_ID"], SCOPE))


def duplicates(emu):
    seen = collections.Counter(c["description"] for c in emu.clients(inactive=True))
    return {d: n for d, n in seen.items() if n > 1}


class Run:
    """Mounts for one fault, each recorded in the table."""

    def __init__(self, fault, emu, provider):
        self.fault = fault
        self.emu = emu
        self.p = provider

    def ok(self, app, pod, timeout=20.0 * STRETCH, same_as=None):
        """A Mount that must succeed (and return same_as, when given)."""
        try:
            files = files_of(self.p.mount(NS, app, scopes=SCOPE, pod_name=pod, timeout=timeout))
        except grpc.RpcError as e:
            record(self.fault, "lost")
            pytest.fail("%s: Mount %s/%s failed: %s %s\n%s" % (
                self.fault, NS, app, e.code(), e.details(), self.p.logs()[-3000:]))
        if same_as is not None and files != same_as:
            record(self.fault, "lost")
            pytest.fail("%s: warm Mount of %s returned different files" % (self.fault, app))
        record(self.fault, "ok")
        return files

    def cold(self, app, pod, expect, needle):
        """A cold Mount during the fault: fails clearly within its deadline, or (expect
        "either") succeeds. Returns the files, or None."""
        t0 = time.monotonic()
        try:
            files = files_of(self.p.mount(NS, app, scopes=SCOPE, pod_name=pod,
                                          timeout=COLD_TIMEOUT))
        except grpc.RpcError as e:
            elapsed = time.monotonic() - t0
            details = e.details() or ""
            clear = (details.startswith("maskinporten: ") and
                     "pod %s/%s" % (NS, pod) in details and
                     "client dev:%s:%s" % (NS, app) in details and
                     needle.lower() in details.lower() and
                     e.code() != grpc.StatusCode.OK and elapsed < COLD_TIMEOUT)
            record(self.fault, "failed" if clear else "lost")
            assert clear, "%s: unclear or late error after %.1fs: %s %r" % (
                self.fault, elapsed, e.code(), details)
            return None
        if expect == "fail":
            # Success is never wrong for the pod, but the fault did not bite: the test
            # would prove nothing.
            record(self.fault, "ok")
            pytest.fail("%s: the cold Mount succeeded during the fault" % self.fault)
        record(self.fault, "ok")
        return files


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault(emulator, tmp_path, fault):
    faults, expect, needle = FAULTS[fault]
    if fault in SHORT_ADMIN_TOKEN:
        emulator.settings(admin_token_lifetime=1)
    p = Provider(emulator, tmp_path, args=PROVIDER_ARGS).start()
    try:
        run = Run(fault, emulator, p)
        warm = None
        if fault not in FRESH:
            warm = run.ok("warm", "warm-1")
            if fault in SHORT_ADMIN_TOKEN:
                time.sleep(1.05)  # the cached admin token is due for a refresh
        for f in faults:
            emulator.fault(**f)

        if warm is not None:
            run.ok("warm", "warm-2", same_as=warm, timeout=COLD_TIMEOUT)
        t0 = time.monotonic()
        run.cold("cold", "cold-1", expect, needle)
        if warm is not None:
            run.ok("warm", "warm-3", same_as=warm, timeout=COLD_TIMEOUT)
        # A request the provider gave up on may still land at DigDir: let it.
        delay = max(f.get("delay", 0) for f in faults)
        time.sleep(max(0.0, t0 + delay + 0.3 - time.monotonic()) if delay else 0)
        assert duplicates(emulator) == {}, fault

        emulator.clear_faults()
        files = run.ok("cold", "cold-1")
        again = run.ok("cold", "cold-2")
        assert again == files
        assert duplicates(emulator) == {}, fault
        [client] = [c for c in emulator.clients() if c["description"] == "dev:%s:cold" % NS]
        assert files["MASKINPORTEN_CLIENT_ID"] == client["client_id"]
        r = get_token(emulator, files)
        assert r.status == 200, (fault, r)
        if warm is not None:
            # No upload during or after the fault dropped the key the warm pods hold.
            r = get_token(emulator, warm)
            assert r.status == 200, (fault, r)
            assert run.ok("warm", "warm-4") == warm
        assert p.proc.poll() is None
    finally:
        p.stop()


def test_expired_admin_tokens_are_refreshed(emulator, tmp_path):
    """Admin tokens that live one second: every flight outlives a token, and the
    provider must notice and fetch another rather than fail."""
    fault = "admin token expires after 1s"
    emulator.settings(admin_token_lifetime=1)
    with Provider(emulator, tmp_path, args=PROVIDER_ARGS) as p:
        run = Run(fault, emulator, p)
        warm = run.ok("warm", "warm-1")
        for i in range(3):
            time.sleep(1.05)
            files = run.ok("cold-%d" % i, "pod-%d" % i)
            assert get_token(emulator, files).status == 200
        assert run.ok("warm", "warm-2") == warm
        assert duplicates(emulator) == {}


def test_revoked_admin_credentials(emulator, tmp_path):
    """The organisation's certificate is revoked: the cached admin token stops
    working at DigDir and no new one is issued. Known clients keep being served;
    new ones fail naming the admin credentials; un-revoking resumes service."""
    fault = "admin credentials revoked"
    with Provider(emulator, tmp_path, args=PROVIDER_ARGS) as p:
        run = Run(fault, emulator, p)
        warm = run.ok("warm", "warm-1")
        before = emulator.clients(inactive=True)
        emulator.settings(revoke_admin=True)
        assert run.ok("warm", "warm-2") == warm
        run.cold("cold", "cold-1", "fail", "admin")
        run.cold("cold", "cold-1", "fail", "admin")
        assert run.ok("warm", "warm-3") == warm
        # Nothing was made or changed at DigDir while the credentials were revoked.
        assert emulator.clients(inactive=True) == before
        emulator.settings(revoke_admin=False)
        files = run.ok("cold", "cold-1")
        assert get_token(emulator, files).status == 200
        assert get_token(emulator, warm).status == 200
        assert duplicates(emulator) == {}


def test_zz_fault_table():
    """Runs last in this module: every Mount is accounted for and none was lost."""
    for line in table_lines():
        print(line)
    assert TABLE, "no fault ran"
    assert sum(r.lost for r in TABLE.values()) == 0
    assert all(r.attempted == r.succeeded + r.failed_expected + r.lost for r in TABLE.values())
