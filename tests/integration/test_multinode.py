"""Several `serve` processes, as on different nodes of one cluster, sharing one
seed and one DigDir (the emulator): concurrent Mounts of the same apps, and
nodes whose clocks sit on both sides of an epoch boundary. Invariants checked
after every step: one client per app, identical keys per (client, epoch), and
every key any node ever handed out still gets a token from Maskinporten."""

import collections
import concurrent.futures
import json
import time

import pytest
from jwcrypto import jwk

from harness import client_grant
from provider_harness import SLOW, Provider, files_of, write_seed

SCOPE = "skatteetaten:testapi"
NS = "team-m"
# Deadlines stretch under valgrind (SLOW), where a key derivation takes seconds.
ARGS = ["--request-timeout", "%ds" % (2 * SLOW), "--mount-timeout", "%ds" % (15 * SLOW)]
MOUNT_TIMEOUT = 30 * SLOW
EPOCH = 3600


class Ledger:
    """Every key handed out, by node, to check the cluster-wide invariants."""

    def __init__(self, emu):
        self.emu = emu
        self.handed = {}  # (client_id, kid) -> JWK JSON
        self.tokens = 0

    def add(self, node, files):
        cid = files["MASKINPORTEN_CLIENT_ID"]
        key = json.loads(files["MASKINPORTEN_CLIENT_JWK"])
        prev = self.handed.setdefault((cid, key["kid"]), files["MASKINPORTEN_CLIENT_JWK"])
        # Same (client, epoch) -> the same key, whichever node derived it.
        assert prev == files["MASKINPORTEN_CLIENT_JWK"], (node, key["kid"])
        return key["kid"]

    def check(self, step):
        # Active clients: a node that lost a create race deletes its own.
        per_app = collections.Counter(c["description"] for c in self.emu.clients())
        assert all(n == 1 for n in per_app.values()), (step, per_app)
        for (cid, kid), text in sorted(self.handed.items()):
            key = jwk.JWK(**json.loads(text))
            r = self.emu.token(client_grant(self.emu, key, cid, SCOPE))
            assert r.status == 200, (step, kid, r)
            self.tokens += 1


def nodes(emu, tmp_path, n, offsets=None):
    seed = write_seed(str(tmp_path / "seed"))
    ps = []
    for i in range(n):
        args = list(ARGS)
        if offsets:
            args += ["--epoch-length", str(EPOCH), "--time-offset", str(offsets[i])]
        ps.append(Provider(emu, tmp_path, name="node%d" % i, seed_file=seed, args=args))
    for p in ps:
        p.start()
    return ps


def stop_all(ps):
    for p in ps:
        p.stop()


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_mounts_on_several_nodes(emulator, tmp_path, n):
    ps = nodes(emulator, tmp_path, n)
    ledger = Ledger(emulator)
    apps = ["app-%d" % i for i in range(4)]
    try:
        jobs = [(p, app, k) for k in range(2) for app in apps for p in ps]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda j: (j, files_of(j[0].mount(NS, j[1], scopes=SCOPE,
                                                  pod_name="%s-%s-%d" % (j[1], j[0].dir[-5:],
                                                                         j[2]),
                                                  timeout=MOUNT_TIMEOUT))), jobs))
        by_app = collections.defaultdict(set)
        for (p, app, _), files in results:
            by_app[app].add((files["MASKINPORTEN_CLIENT_ID"], files["MASKINPORTEN_CLIENT_JWK"]))
            ledger.add(p.dir, files)
        for app in apps:
            # One client and one key per app, whichever node answered.
            assert len(by_app[app]) == 1, (app, len(by_app[app]))
        ledger.check("concurrent")
        for app in apps:
            [client] = [c for c in emulator.clients() if c["description"] ==
                        "dev:%s:%s" % (NS, app)]
            assert len(emulator.client(client["client_id"])["keys"]) == 2
    finally:
        stop_all(ps)


def boundary_offsets(before=300, after=300, *more):
    """Offsets that put node A `before` seconds before the next epoch boundary,
    node B `after` seconds after it (and further nodes at `more` seconds from it)."""
    now = int(time.time())
    b = (now // EPOCH + 1) * EPOCH
    return [b - before - now, b + after - now] + [b + m - now for m in more]


@pytest.mark.parametrize("n", [2, 3])
def test_nodes_on_both_sides_of_an_epoch_boundary(emulator, tmp_path, n):
    offsets = boundary_offsets(300, 300, *([EPOCH - 600] if n == 3 else []))
    ps = nodes(emulator, tmp_path, n, offsets)
    ledger = Ledger(emulator)
    try:
        steps = 0
        for i, app in enumerate(["alpha", "beta", "gamma"]):
            # Alternate which side of the boundary provisions the app first.
            order = ps if i % 2 == 0 else list(reversed(ps))
            kids = {}
            for rnd in range(2):
                for j, p in enumerate(order):
                    files = files_of(p.mount(NS, app, scopes=SCOPE,
                                             pod_name="%s-%d-%d" % (app, j, rnd),
                                             timeout=MOUNT_TIMEOUT))
                    kids[p.dir] = ledger.add(p.dir, files)
                    steps += 1
                    ledger.check("%s round %d node %s" % (app, rnd, p.dir))
            # Node A hands out epoch e, the nodes past the boundary e+1.
            epoch = [int(kids[p.dir].split(".")[2]) for p in ps]
            assert epoch[1] == epoch[0] + 1, kids
            assert all(e == epoch[1] for e in epoch[2:]), kids
            [client] = [c for c in emulator.clients() if c["description"] ==
                        "dev:%s:%s" % (NS, app)]
            registered = {k["kid"] for k in emulator.client(client["client_id"])["keys"]}
            assert set(kids.values()) <= registered
        # After the boundary, node A's clients get a key of the next epoch: restart A
        # as if its clock had moved on, and the keys of both epochs keep working.
        ps[0].stop()
        later = Provider(emulator, tmp_path, name="node0-later", seed_file=ps[1].seed_file,
                         args=ARGS + ["--epoch-length", str(EPOCH), "--time-offset",
                                      str(boundary_offsets(300, 310)[1])]).start()
        ps[0] = later
        for app in ["alpha", "beta", "gamma"]:
            files = files_of(later.mount(NS, app, scopes=SCOPE, pod_name=app + "-later",
                                         timeout=MOUNT_TIMEOUT))
            ledger.add(later.dir, files)
            ledger.check("%s after A crossed" % app)
        assert steps >= 12
    finally:
        stop_all(ps)
