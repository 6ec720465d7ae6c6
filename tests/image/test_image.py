"""The built image (`make image-test`, after `make image`): what it holds, and
the DaemonSet's two containers run from it against the emulator.

podman cannot start containers on this kind of machine, so the image's root
filesystem is exported (`podman create` + `podman export`) and its programs
run as a runtime would run them (in_image.py): chrooted into that root
mounted read-only, in a private mount namespace, as the manifest's user with
the manifest's capabilities. Needs root and podman; MCP_IMAGE names the image.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import in_image  # noqa: E402
from provider_harness import SEED, attributes, files_of  # noqa: E402
import provider_pb2  # noqa: E402
import grpc  # noqa: E402

IMAGE = os.environ.get("MCP_IMAGE", "maskinporten-csi-provider:0.1.0")
BIN = "/usr/local/bin/maskinporten-csi-provider"
LIMIT_BYTES = 40 * 1000 * 1000  # the target: at most 40 MB uncompressed
OLD_BYTES = 299 * 1000 * 1000  # the Debian 12 slim image this one replaced
SCOPE = "skatteetaten:testapi"
DEPLOY = os.path.join(ROOT, "deploy")
CA_IN_IMAGE = "/etc/emulator/ca.pem"
PROXY_NAME = "proxy.image-test.invalid"
NOT_ALLOWED = ("bin/sh", "bin/bash", "bin/dash", "usr/bin/sh", "usr/bin/bash", "bin/busybox",
               "usr/bin/env", "usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "var/lib/dpkg",
               "etc/apt", "usr/bin/perl", "usr/bin/python3")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs chroot and mount: needs root")


def podman(*args, **kw):
    return subprocess.run(["podman"] + list(args), capture_output=True, check=False, **kw)


def version():
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        return re.search(r"^VERSION\s*:=\s*(\S+)", f.read(), re.M).group(1)


@pytest.fixture(scope="module")
def inspect():
    p = podman("image", "inspect", IMAGE, text=True)
    if p.returncode != 0:
        pytest.fail("no image %s (run `make image` first): %s" % (IMAGE, p.stderr.strip()),
                    pytrace=False)
    (info,) = json.loads(p.stdout)
    return info


class Rootfs:
    """The image's files, as exported: .path (unpacked), .members {name: TarInfo}."""

    def __init__(self, path, members):
        self.path = path
        self.members = members

    def file(self, name):
        return os.path.join(self.path, name)


@pytest.fixture(scope="module")
def rootfs(inspect, tmp_path_factory):
    base = tmp_path_factory.mktemp("image")
    tar = str(base / "rootfs.tar")
    name = "mcp-image-test-%d" % os.getpid()
    podman("rm", "-f", name)
    p = podman("create", "--name", name, IMAGE, text=True)
    assert p.returncode == 0, p.stderr
    try:
        p = podman("export", "-o", tar, name, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        podman("rm", "-f", name)
    with tarfile.open(tar) as t:
        members = {m.name.rstrip("/").lstrip("./"): m for m in t.getmembers()}
    members.pop("", None)
    path = str(base / "root")
    os.mkdir(path)
    subprocess.run(["tar", "-x", "-p", "--same-owner", "-f", tar, "-C", path], check=True)
    os.unlink(tar)
    return Rootfs(path, members)


def run(rootfs, args, timeout=60, **kw):
    return subprocess.run(in_image.command(rootfs.path, [BIN] + list(args), **kw),
                          capture_output=True, text=True, timeout=timeout, check=False)


# ---- what the image is -------------------------------------------------------

def test_size_at_most_40_mb(inspect):
    size = inspect["Size"]
    print("image %s: %.1f MB uncompressed, was %.0f MB" % (IMAGE, size / 1e6, OLD_BYTES / 1e6))
    assert size <= LIMIT_BYTES, "%.1f MB is over the 40 MB target" % (size / 1e6)


def test_runs_the_provider_as_65532(inspect):
    cfg = inspect["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == [BIN]
    assert cfg["Cmd"] == ["serve"]


def elf_needed(path):
    """(interpreter or None, [NEEDED sonames]) of an ELF file, from readelf."""
    out = subprocess.run(["readelf", "-W", "-l", "-d", path], capture_output=True, text=True,
                         check=True).stdout
    interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", out)
    return (interp.group(1) if interp else None,
            re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))


def test_holds_the_binary_its_libraries_certificates_and_users_only(rootfs):
    """Every file is one the binary needs: the loader it names, the closure of
    its NEEDED libraries as the loader finds them, the CA bundle, passwd and
    group. Nothing is missing and nothing else is there: no symlink, no device."""
    interp, needed = elf_needed(rootfs.file(BIN.lstrip("/")))
    assert interp, "the binary names no dynamic loader"
    lib_dirs = sorted({os.path.dirname(n) for n, m in rootfs.members.items()
                       if m.isfile() and ".so" in n})
    expected = {BIN.lstrip("/"), interp.lstrip("/"), "etc/passwd", "etc/group",
                "etc/ssl/certs/ca-certificates.crt"}
    todo, seen, missing = list(needed), set(), []
    while todo:
        soname = todo.pop()
        if soname in seen or soname == os.path.basename(interp):
            continue
        seen.add(soname)
        found = [d + "/" + soname for d in lib_dirs if d + "/" + soname in rootfs.members]
        if not found:
            missing.append(soname)
            continue
        expected.add(found[0])
        todo += elf_needed(rootfs.file(found[0]))[1]
    assert not missing, "libraries the loader would not find: %s" % missing
    files = {n for n, m in rootfs.members.items() if not m.isdir()}
    assert {n for n in files if not rootfs.members[n].isfile()} == set(), "links or devices"
    assert files == expected, "unexpected %s, missing %s" % (sorted(files - expected),
                                                            sorted(expected - files))
    for n in files:
        m = rootfs.members[n]
        assert (m.uid, m.gid) == (0, 0) and not m.mode & 0o022, "%s %o" % (n, m.mode)
    print("%d files: the binary, the loader, %d libraries, CA bundle, passwd, group"
          % (len(files), len(expected) - 5))


def test_no_shell_and_no_package_manager(rootfs):
    present = [n for n in NOT_ALLOWED if n in rootfs.members]
    assert not present, present
    executables = sorted(n for n, m in rootfs.members.items() if m.isfile() and m.mode & 0o111)
    interp, _ = elf_needed(rootfs.file(BIN.lstrip("/")))
    assert executables == sorted([BIN.lstrip("/"), interp.lstrip("/")])


def test_users_and_certificates(rootfs):
    with open(rootfs.file("etc/passwd"), encoding="utf-8") as f:
        users = {line.split(":")[2]: line.strip().split(":") for line in f if line.strip()}
    assert users["65532"][3] == "65532" and users["65532"][6] == "/nonexistent"
    with open(rootfs.file("etc/group"), encoding="utf-8") as f:
        assert "65532" in {line.split(":")[2] for line in f if line.strip()}
    with open(rootfs.file("etc/ssl/certs/ca-certificates.crt"), encoding="utf-8") as f:
        assert f.read().count("BEGIN CERTIFICATE") > 100


# ---- the binary, from the read-only root ---------------------------------------

def test_version_as_65532_from_a_read_only_root(rootfs):
    p = run(rootfs, ["version"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "maskinporten-csi-provider %s\n" % version()


def test_serve_check_without_configuration_fails_clearly(rootfs):
    p = run(rootfs, ["serve", "--check"])
    assert p.returncode == 1, (p.stdout, p.stderr)
    (line,) = p.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["msg"] == "serve: missing --cluster-name (or MPCSI_CLUSTER_NAME)"


# ---- the DaemonSet's containers, from the image ---------------------------------

def manifest(name):
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


class ConnectProxy:
    """An HTTPS proxy (HTTP CONNECT) on loopback that counts its tunnels."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.tunnels = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            m = re.match(rb"CONNECT 127\.0\.0\.1:(\d+) HTTP/1\.[01]\r\n", head)
            if not m:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            self.tunnels.append(int(m.group(1)))
            with socket.create_connection(("127.0.0.1", int(m.group(1)))) as up:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {conn: up, up: conn}
                while True:
                    ready, _, _ = select.select(list(pair), [], [], 30)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        pair[s].sendall(data)

    def close(self):
        self._stop = True
        self.sock.close()


def secret_volume(path, files):
    """A Secret volume as the kubelet writes it: root's, 0400 (defaultMode),
    each key a symlink into ..data, a symlink to a timestamped directory."""
    data = os.path.join(path, "..2025_01_01_00_00_00.000000001")
    os.makedirs(data)
    for name, content in files.items():
        with open(os.path.join(data, name), "wb") as f:
            f.write(content)
        os.chmod(os.path.join(data, name), 0o400)
        os.symlink("..data/" + name, os.path.join(path, name))
    os.symlink(os.path.basename(data), os.path.join(path, "..data"))
    return path


def container_command(rootfs, pod, c, volumes, env=None, extra_binds=()):
    """The in_image command for container c of the pod spec, with the pod's
    volumes (name -> host path) where c mounts them, and extra_binds."""
    sc = dict(pod.get("securityContext") or {})
    sc.update(c.get("securityContext") or {})
    assert sc["readOnlyRootFilesystem"] is True
    binds = [(volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))) for m in
             c["volumeMounts"]] + list(extra_binds)
    caps = (sc.get("capabilities") or {}).get("add", [])
    argv = (c.get("command") or [BIN]) + c.get("args", [])
    return in_image.command(rootfs.path, argv, user=(sc["runAsUser"], sc["runAsGroup"]),
                            caps=caps, binds=binds, env=env)


def proc_status(pid):
    with open("/proc/%d/status" % pid, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def root_mount_options(pid):
    with open("/proc/%d/mountinfo" % pid, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/":
                return fields[5].split(",")
    return []


def wait_for(what, cond, timeout, proc, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("the provider exited %d before %s: %s" % (proc.returncode, what, log()))
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail("no %s within %d s: %s" % (what, timeout, log()))


@pytest.mark.parametrize("via", ["direct", "https-proxy"])
def test_the_daemonset_runs_from_the_image(rootfs, emulator, tmp_path, via):
    """The init container's arguments prepare the socket directory and the
    credentials as root with only its two capabilities; the provider's
    arguments then serve as 65532 from the read-only root, answer a Mount over
    HTTPS to the emulator (with its CA file; through a CONNECT proxy too,
    found by name), and answer /healthz and /readyz."""
    ds = manifest("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (provider,) = pod["containers"]
    info = emulator.info
    with open(info["admin_key_file"], "rb") as f:
        admin_key = f.read()
    with open(info["admin_cert_file"], "rb") as f:
        admin_chain = f.read()
    providers_dir = tmp_path / "providers"
    providers_dir.mkdir(mode=0o755)
    os.chmod(providers_dir, 0o755)
    credentials = tmp_path / "credentials"  # the memory-backed emptyDir
    credentials.mkdir()
    os.chmod(credentials, 0o777)
    volumes = {
        "providers-dir": str(providers_dir),
        "credentials-secret": secret_volume(str(tmp_path / "secret"), {
            "admin-key.pem": admin_key, "admin-chain.pem": admin_chain, "seed": SEED}),
        "credentials": str(credentials),
    }
    assert set(volumes) == {v["name"] for v in pod["volumes"]}

    p = subprocess.run(container_command(rootfs, pod, init, volumes), capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert os.stat(providers_dir).st_gid == 65532
    for name, content in (("admin-key.pem", admin_key), ("seed", SEED)):
        st = os.stat(credentials / name)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65532, 65532, 0o400)
        assert (credentials / name).read_bytes() == content

    # The provider: ConfigMap and container env, pointed at the emulator.
    env = dict(manifest("configmap.yaml")["data"])
    env.update({e["name"]: e["value"] for e in provider.get("env", [])})
    env.update({"MPCSI_DIGDIR_URL": info["digdir_url"],
                "MPCSI_WELL_KNOWN_URL": info["well_known_url"],
                "MPCSI_ADMIN_CLIENT_ID": info["admin_client_id"],
                "MPCSI_CA_FILE": CA_IN_IMAGE, "MPCSI_METRICS_ADDR": "127.0.0.1:0",
                "MPCSI_PROBE_ADDR": "127.0.0.1:0",
                "MPCSI_LOG_LEVEL": "debug"})
    binds = [(info["ca_file"], CA_IN_IMAGE, True)]
    proxy = None
    if via == "https-proxy":
        # Named, not numbered: glibc in the image resolves it through
        # /etc/hosts, which the kubelet mounts as this test does.
        proxy = ConnectProxy()
        env["MPCSI_HTTPS_PROXY"] = "http://%s:%d" % (PROXY_NAME, proxy.port)
        hosts = tmp_path / "hosts"
        hosts.write_text("127.0.0.1\tlocalhost\n127.0.0.1\t%s\n" % PROXY_NAME)
        binds.append((str(hosts), "/etc/hosts", True))
    cmd = container_command(rootfs, pod, provider, volumes, env, extra_binds=binds)
    log_path = tmp_path / "provider.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)

    def logs():
        return log_path.read_text(errors="replace")

    sock = str(providers_dir / "maskinporten.sock")
    channel = None
    try:
        # The DaemonSet serves probes on a listener of their own, apart from /metrics.
        probe_port = int(wait_for("probe port", lambda: re.search(
            r"health probes on http://127\.0\.0\.1:0 \(port (\d+)\)", logs()), 30, proc,
            logs).group(1))
        metrics_port = int(wait_for("metrics port", lambda: re.search(
            r"\"metrics on http://127\.0\.0\.1:0 \(port (\d+)\)", logs()), 30, proc,
            logs).group(1))
        wait_for("socket", lambda: os.path.exists(sock), 30, proc, logs)

        status = proc_status(proc.pid)
        assert status["Uid"].split() == ["65532"] * 4, status["Uid"]
        assert status["Gid"].split() == ["65532"] * 4, status["Gid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert "ro" in root_mount_options(proc.pid)
        assert os.stat(sock).st_uid == 65532

        channel = grpc.insecure_channel("unix:" + sock,
                                        options=[("grpc.default_authority", "localhost")])
        mount = channel.unary_unary(
            "/v1alpha1.CSIDriverProvider/Mount",
            request_serializer=provider_pb2.MountRequest.SerializeToString,
            response_deserializer=provider_pb2.MountResponse.FromString)
        resp = mount(provider_pb2.MountRequest(
            attributes=attributes("team-a", "payments", params={"scopes": SCOPE}),
            secrets="null", permission="420", target_path="/tmp/unused"), timeout=60)
        files = files_of(resp)
        assert files["MASKINPORTEN_SCOPES"] == SCOPE
        assert files["MASKINPORTEN_ISSUER"] == emulator.issuer
        (client,) = [c for c in emulator.clients()
                     if c["description"] == "my-cluster:team-a:payments"]
        assert files["MASKINPORTEN_CLIENT_ID"] == client["client_id"]

        for port, path in ((probe_port, "/healthz"), (probe_port, "/readyz"),
                           (metrics_port, "/metrics")):
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                        timeout=30) as r:
                assert r.status == 200, path
        if proxy:
            assert proxy.tunnels and set(proxy.tunnels) == {int(info["base_url"].rsplit(":", 1)[1])}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, logs()
    finally:
        if channel:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proxy:
            proxy.close()
