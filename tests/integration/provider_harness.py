"""Drives the real provider binary the way the Secrets Store CSI Driver does:
`serve` on a Unix socket, Mount over gRPC (grpcio) with the driver's attribute
encoding, against the emulator.

    p = Provider(emulator, tmp_path).start()
    resp = p.mount("team-a", "payments", scopes="skatteetaten:testapi")
    files = files_of(resp)
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("MCP_BIN") or os.path.join(ROOT, "build", "maskinporten-csi-provider")
PYDIR = os.environ.get("MCP_PYDIR") or os.path.join(ROOT, "build", "py")
sys.path.insert(0, PYDIR)

import provider_pb2  # noqa: E402

MOUNT = "/v1alpha1.CSIDriverProvider/Mount"
VERSION = "/v1alpha1.CSIDriverProvider/Version"
SEED = bytes(range(64))
# The scope prefix the emulator assigns to its organisation unless a test says otherwise.
SCOPE_PREFIX = "test"
# `make valgrind` runs serve under a wrapper ("valgrind --log-file=... "); slower, so waits stretch.
WRAPPER = shlex.split(os.environ.get("MCP_WRAPPER", ""))
SLOW = 10.0 if WRAPPER else 1.0
# Pids of processes that raised SIGKILL on themselves (serve --test-crash-in-write). valgrind
# still runs its leak check on such a process, but only after it has torn down the other
# threads, so what their stacks held reads as lost: conftest drops those leak records
# (and only those) from these processes' logs.
KILLED_ITSELF = set()


def cli(*args):
    """The command line that runs the binary with args, under the wrapper when there is one."""
    return WRAPPER + [BIN] + [str(a) for a in args]


# Lines a sanitizer writes when the provider misbehaves; any of them fails stop().
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "WARNING: ThreadSanitizer")


def sanitizer_report(text):
    """The first sanitizer report line in text, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


def write_seed(path, data=SEED, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def upstream_args(emu, seed_file, cluster="dev"):
    """The flags that point a command at the emulator."""
    i = emu.info
    return ["--cluster-name", cluster, "--digdir-url", i["digdir_url"], "--well-known-url",
            i["well_known_url"], "--admin-client-id", i["admin_client_id"], "--admin-key-file",
            i["admin_key_file"], "--admin-cert-file", i["admin_cert_file"], "--ca-file",
            i["ca_file"], "--seed-file", seed_file, "--scope-prefix", SCOPE_PREFIX]


def attributes(namespace, service_account, pod_name=None, pod_uid=None, params=None, spc="mp"):
    """The attributes JSON exactly as driver v1.6 builds it: SPC parameters, then the pod's
    volumeAttributes (secretProviderClass), then the kubelet's pod attributes."""
    a = {}
    a.update(params or {})
    a["secretProviderClass"] = spc
    a["csi.storage.k8s.io/ephemeral"] = "true"
    a["csi.storage.k8s.io/pod.name"] = pod_name or "%s-%s" % (service_account, uuid.uuid4().hex[:5])
    a["csi.storage.k8s.io/pod.namespace"] = namespace
    a["csi.storage.k8s.io/pod.uid"] = pod_uid or str(uuid.uuid4())
    a["csi.storage.k8s.io/serviceAccount.name"] = service_account
    return json.dumps(a)


def files_of(resp):
    return {f.path: f.contents.decode() for f in resp.files}


def modes_of(resp):
    return {f.path: f.mode for f in resp.files}


def versions_of(resp):
    return {v.id: v.version for v in resp.object_version}


class Provider:
    """One `serve` process on its own socket."""

    def __init__(self, emu, tmp_path, name="p", cluster="dev", seed_file=None, args=()):
        self.emu = emu
        self.dir = os.path.join(str(tmp_path), name)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "maskinporten.sock")
        self.seed_file = seed_file or write_seed(os.path.join(self.dir, "seed"))
        self.cluster = cluster
        self.args = list(args)
        self.proc = None
        self.log_path = os.path.join(self.dir, "provider.log")
        self._channel = None

    def command(self):
        return WRAPPER + [BIN, "serve", "--socket", self.socket, "--log-level", "debug"] + \
            upstream_args(self.emu, self.seed_file, self.cluster) + self.args

    def start(self, timeout=15.0):
        timeout *= SLOW
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=self._log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("provider exited %d: %s" % (self.proc.returncode, self.logs()))
            if os.path.exists(self.socket):
                try:
                    self.version(timeout=2)
                    return self
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("provider did not start: %s" % self.logs())

    def stop(self, sig=signal.SIGTERM, timeout=20):
        timeout *= SLOW
        if self._channel:
            self._channel.close()
            self._channel = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()
            report = sanitizer_report(self.logs())
            assert report is None, "sanitizer report in %s: %s" % (self.log_path, report)
        return self.proc.returncode if self.proc else None

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def channel(self):
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                "unix:" + self.socket, options=[("grpc.default_authority", "localhost")])
        return self._channel

    def version(self, timeout=5):
        call = self.channel().unary_unary(
            VERSION, request_serializer=provider_pb2.VersionRequest.SerializeToString,
            response_deserializer=provider_pb2.VersionResponse.FromString)
        # Under valgrind a Version can wait behind key derivations that run 50x slower.
        return call(provider_pb2.VersionRequest(version="v1alpha1"), timeout=timeout * SLOW)

    def mount_raw(self, attrs, secrets="null", permission="420", target_path="/tmp/unused",
                  timeout=None):
        """A Mount; without a timeout, the driver's default of 60 s (stretched by SLOW)."""
        if timeout is None:
            timeout = 60 * SLOW
        call = self.channel().unary_unary(
            MOUNT, request_serializer=provider_pb2.MountRequest.SerializeToString,
            response_deserializer=provider_pb2.MountResponse.FromString)
        req = provider_pb2.MountRequest(attributes=attrs, secrets=secrets, permission=permission,
                                        target_path=target_path)
        return call(req, timeout=timeout)

    def mount(self, namespace, service_account, scopes=None, params=None, pod_name=None,
              **kw):
        p = dict(params or {})
        if scopes is not None:
            p["scopes"] = scopes
        return self.mount_raw(attributes(namespace, service_account, pod_name=pod_name,
                                         params=p), **kw)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
