"""kill -9 of `serve` in the middle of its work, then a restart: during
provisioning at DigDir (no duplicate client, a working key afterwards) and
at every step of a provider-mode volume write (the target holds nothing
readable or a complete file set behind ..data, never a half-written volume)."""

import json
import os
import re
import signal
import stat
import time

import grpc
import pytest
from jwcrypto import jwk

from harness import client_grant
from provider_harness import (KILLED_ITSELF, MOUNT, SLOW, WRAPPER, Provider, attributes,
                              files_of, provider_pb2, write_seed)

SCOPE = "skatteetaten:testapi"
NS = "team-k"
# Deadlines stretch under valgrind (SLOW), where a key derivation takes seconds.
ARGS = ["--request-timeout", "5s", "--mount-timeout", "%ds" % (10 * SLOW)]
EXPECTED = {"MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_CLIENT_JWK", "MASKINPORTEN_SCOPES",
            "MASKINPORTEN_WELL_KNOWN_URL", "MASKINPORTEN_ISSUER", "MASKINPORTEN_JWKS_URI",
            "MASKINPORTEN_TOKEN_ENDPOINT", "maskinporten.env"}


def get_token(emu, files):
    key = jwk.JWK(**json.loads(files["MASKINPORTEN_CLIENT_JWK"]))
    return emu.token(client_grant(emu, key, files["MASKINPORTEN_CLIENT_ID"], SCOPE))


def kill9(p):
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(10)
    p.stop()


def mount_async(p, app, pod, **kw):
    call = p.channel().unary_unary(
        MOUNT, request_serializer=provider_pb2.MountRequest.SerializeToString,
        response_deserializer=provider_pb2.MountResponse.FromString)
    req = provider_pb2.MountRequest(attributes=attributes(NS, app, pod_name=pod,
                                                          params={"scopes": SCOPE}),
                                    secrets="null", permission=kw.get("permission", "420"),
                                    target_path=kw.get("target_path", "/tmp/unused"))
    return call.future(req, timeout=30 * SLOW)


class Restartable(Provider):
    """A Provider that dials afresh until serve answers: after kill -9 the socket
    file stays behind, and a channel that met it would wait out gRPC's reconnect
    backoff (seconds) after serve has replaced it."""

    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                "unix:" + self.socket, options=[("grpc.default_authority", "localhost"),
                                                ("grpc.use_local_subchannel_pool", 1)])
        return self._channel

    def version(self, timeout=5):
        try:
            return super().version(timeout)
        except grpc.RpcError:
            self._channel.close()
            self._channel = None
            raise


def restart(emu, tmp_path, seed, name="p", args=ARGS):
    # A restarted pod reuses the socket path: the stale socket file must not stop it.
    p = Restartable(emu, tmp_path, name=name, seed_file=seed, args=args).start()
    assert os.path.exists(p.socket)
    return p


@pytest.mark.parametrize("where", ["POST /clients", "POST /clients/{id}/jwks"])
def test_kill_during_provisioning(emulator, tmp_path, where):
    path = "^/api/v1/clients$" if where == "POST /clients" else "/jwks$"
    # Long enough for the kill below to land inside it on a busy machine; the wait
    # for its end polls, so the length costs only itself.
    emulator.fault(method="POST", path=path, delay=4, count=1)
    seed = write_seed(str(tmp_path / "seed"))
    p = restart(emulator, tmp_path, seed)
    fut = mount_async(p, "app", "pod-1")
    # Kill once the request is at DigDir, waiting in the fault's delay.
    deadline = time.monotonic() + 10 * SLOW
    while emulator.counts().get(where.replace("/clients", "/api/v1/clients"), 0) == 0:
        assert time.monotonic() < deadline, "the request never reached DigDir"
        time.sleep(0.02)
    kill9(p)
    with pytest.raises(grpc.RpcError):
        fut.result()
    # The request the dead provider sent still completes at DigDir: wait until the
    # emulator has answered it (recorded in its log), however slow the machine.
    done = re.compile(path)
    deadline = time.monotonic() + 30 * SLOW
    while not any(e["method"] == "POST" and done.search(e["path"]) for e in emulator.log()):
        assert time.monotonic() < deadline, "DigDir never finished the killed request"
        time.sleep(0.05)
    p = restart(emulator, tmp_path, seed)
    try:
        files = files_of(p.mount(NS, "app", scopes=SCOPE, pod_name="pod-2",
                                 timeout=20 * SLOW))
        clients = [c for c in emulator.clients(inactive=True)
                   if c["description"] == "dev:%s:app" % NS]
        assert len(clients) == 1, clients
        assert files["MASKINPORTEN_CLIENT_ID"] == clients[0]["client_id"]
        assert get_token(emulator, files).status == 200
        assert emulator.counts()["POST /api/v1/clients"] == 1
    finally:
        p.stop()


def check_volume(target, client_id):
    """The invariant the writer keeps at every instant (src/writer.c): either ..data
    names a complete set with every link in place, or there is no ..data and every
    visible name is a link of ours that resolves nowhere (a first write killed
    before its switch). Returns the mode of the readable set, or None when none is."""
    names = set(os.listdir(target))
    visible = {n for n in names if not n.startswith("..")}
    if "..data" not in names:
        assert visible <= EXPECTED, names
        for n in visible:
            assert os.readlink(os.path.join(target, n)) == "..data/" + n
            assert not os.path.exists(os.path.join(target, n)), n
        return None
    assert visible == EXPECTED, names
    data = os.path.join(target, os.readlink(os.path.join(target, "..data")))
    assert set(os.listdir(data)) == EXPECTED
    modes = set()
    for n in EXPECTED:
        assert os.readlink(os.path.join(target, n)) == "..data/" + n
        st = os.stat(os.path.join(data, n))
        modes.add(stat.S_IMODE(st.st_mode))
    assert len(modes) == 1 and modes <= {0o644, 0o640}, modes
    key = json.loads(open(os.path.join(target, "MASKINPORTEN_CLIENT_JWK")).read())
    assert {"kid", "n", "e", "d", "p", "q", "dp", "dq", "qi"} <= set(key)
    assert open(os.path.join(target, "MASKINPORTEN_CLIENT_ID")).read() == client_id
    env = open(os.path.join(target, "maskinporten.env")).read()
    assert env.endswith("\n") and "MASKINPORTEN_TOKEN_ENDPOINT=" in env
    return modes.pop()


def leftovers(target):
    """What a write leaves only when it was killed: data directories that ..data does
    not name, and the temporary links."""
    names = set(os.listdir(target))
    current = os.readlink(os.path.join(target, "..data")) if "..data" in names else None
    return {n for n in names if (n.startswith("..2") and n != current) or
            n in ("..data_tmp", "..user_tmp")}


def pod_target(kubelet, uid):
    t = kubelet / "pods" / uid / "volumes" / "kubernetes.io~csi" / "mp" / "mount"
    t.mkdir(parents=True)
    return t


# Every step natively and under ASan. Under valgrind each step costs a provider start and a
# key derivation that run 50x slower: there every 6th step is killed, for the memory
# checks; the native and ASan runs are the ones that walk every step.
STRIDE = 6 if WRAPPER else 1


def test_kill_at_every_step_of_a_provider_mode_write(emulator, tmp_path):
    """serve --test-crash-in-write N kills itself (SIGKILL) right after the Nth change
    its write makes to the target: each N in turn, until a write completes, so every
    step of the writer is hit, whatever the machine's load. Once on an empty target (a
    pod's first Mount), once over a complete older set (a mode change). After each
    kill the invariant holds, and a Mount by a running provider completes the volume
    and leaves nothing behind."""
    kubelet = tmp_path / "kubelet"
    seed = write_seed(str(tmp_path / "seed"))
    args = ARGS + ["--write-mode", "provider", "--kubelet-dir", str(kubelet)]
    # The provider that completes each volume after a kill, and prepares the older set.
    w = restart(emulator, tmp_path, seed, name="w", args=args)
    try:
        scratch = pod_target(kubelet, "uid-scratch")
        w.mount(NS, "app", scopes=SCOPE, target_path=str(scratch), timeout=30 * SLOW)
        client_id = (scratch / "MASKINPORTEN_CLIENT_ID").read_text()
        for over in (False, True):
            seen = {"nothing": 0, "old": 0, "new": 0}
            target = pod_target(kubelet, "uid-over") if over else None
            for n in range(1, 200, STRIDE):
                if over:
                    w.mount(NS, "app", scopes=SCOPE, target_path=str(target), permission="420")
                    assert check_volume(str(target), client_id) == 0o644
                else:
                    target = pod_target(kubelet, "uid-first-%d" % n)
                c = restart(emulator, tmp_path, seed, name="c%d%s" % (n, "o" if over else ""),
                            args=args + ["--test-crash-in-write", str(n)])
                fut = mount_async(c, "app", "pod-%d" % n, permission="416",
                                  target_path=str(target))
                try:
                    fut.result()
                    completed = True
                except grpc.RpcError:
                    completed = False
                if not completed:
                    assert c.proc.wait(10 * SLOW) == -signal.SIGKILL, c.logs()
                    KILLED_ITSELF.add(c.proc.pid)
                c.stop()
                after = check_volume(str(target), client_id)
                seen["nothing" if after is None else "new" if after == 0o640 else "old"] += 1
                if completed:
                    assert after == 0o640
                    break
                # Killed: the running provider completes the volume, leaving nothing else.
                w.mount(NS, "app", scopes=SCOPE, target_path=str(target), permission="416")
                assert check_volume(str(target), client_id) == 0o640
                assert leftovers(target) == set(), os.listdir(str(target))
            else:
                pytest.fail("the write never completed: %s" % seen)
            # Both sides of the switch were hit: the first write's empty (or older) state
            # and the new set (killed just after the switch, and complete).
            assert seen["old" if over else "nothing"] >= 1, seen
            assert seen["new"] >= (2 if STRIDE == 1 else 1), seen
            print("kill -9 at each of %d steps (%s):" % (n, "over a set" if over else "first"),
                  seen)
        files = {n: (target / n).read_text() for n in EXPECTED}
        assert get_token(emulator, files).status == 200
    finally:
        w.stop()
