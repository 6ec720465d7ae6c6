"""`prepare`, the DaemonSet's init container, through the real binary: run with
the manifest's own arguments (volume paths moved under tmp_path) as root with
only the manifest's capabilities, against a Secret volume laid out as the
kubelet lays it out. It must give the socket directory to group 65532, copy
the credentials as 65532:65532 mode 0400, refuse bad input without changing
anything, and give the same result when run again.
"""

import os
import stat
import subprocess

import pytest
import yaml

from provider_harness import SLOW, cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UID = GID = 65532
KEY = b"-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"
CHAIN = b"-----BEGIN CERTIFICATE-----\nnot a real chain\n-----END CERTIFICATE-----\n"
SEED = bytes(range(256))[::-1][:64]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="prepare chowns: needs root")


def init_container():
    with open(os.path.join(ROOT, "deploy", "daemonset.yaml"), encoding="utf-8") as f:
        ds = yaml.safe_load(f)
    (c,) = ds["spec"]["template"]["spec"]["initContainers"]
    return c


def kubelet_secret(path, files):
    """A Secret volume: each key a symlink into ..data, root's, mode 0400."""
    data = os.path.join(path, "..2025_01_01_00_00_00.000000001")
    os.makedirs(data)
    for name, content in files.items():
        with open(os.path.join(data, name), "wb") as f:
            f.write(content)
        os.chmod(os.path.join(data, name), 0o400)
        os.symlink("..data/" + name, os.path.join(path, name))
    os.symlink(os.path.basename(data), os.path.join(path, "..data"))
    return path


class Pod:
    """The init container's volumes under tmp_path, and its command line."""

    def __init__(self, tmp_path, files=None):
        self.c = init_container()
        self.providers = str(tmp_path / "providers")
        os.mkdir(self.providers)
        # A hostPath the driver made: root's; others' bits must survive.
        os.chmod(self.providers, 0o751)
        self.secret = kubelet_secret(str(tmp_path / "secret"), files if files is not None else
                                     {"admin-key.pem": KEY, "admin-chain.pem": CHAIN,
                                      "seed": SEED})
        self.credentials = str(tmp_path / "credentials")
        os.mkdir(self.credentials)
        os.chmod(self.credentials, 0o777)  # an emptyDir
        by_volume = {"providers-dir": self.providers, "credentials-secret": self.secret,
                     "credentials": self.credentials}
        self.paths = {m["mountPath"]: by_volume[m["name"]] for m in self.c["volumeMounts"]}

    def args(self):
        """The manifest's arguments, each mount path moved to its tmp_path directory."""
        assert self.c["args"][0] == "prepare" and "command" not in self.c
        return [self.paths.get(a, a) for a in self.c["args"][1:]]

    def run(self, args=None, caps=None):
        """Runs prepare as root with only caps (default: the manifest's)."""
        if caps is None:
            caps = self.c["securityContext"]["capabilities"]["add"]
        bounding = ",".join(["-all"] + ["+" + c.lower() for c in caps])
        cmd = ["setpriv", "--bounding-set", bounding, "--inh-caps", "-all"] + \
            cli("prepare", *(self.args() if args is None else args))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30 * SLOW,
                              check=False)

    def state(self):
        """Everything prepare may change: the socket directory and the credentials."""
        st = os.stat(self.providers)
        out = {"providers": (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))}
        for name in sorted(os.listdir(self.credentials)):
            path = os.path.join(self.credentials, name)
            st = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[name] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), content)
        return out


def test_manifest_arguments_prepare_the_pod(tmp_path):
    pod = Pod(tmp_path)
    p = pod.run()
    assert p.returncode == 0, p.stderr
    assert pod.state() == {
        "providers": (0, GID, 0o771),
        "admin-key.pem": (UID, GID, 0o400, KEY),
        "admin-chain.pem": (UID, GID, 0o400, CHAIN),
        "seed": (UID, GID, 0o400, SEED),
    }
    # It says what it did, and never what the files hold.
    assert "group 65532, mode 0771" in p.stdout
    assert p.stdout.count("owner 65532:65532, mode 0400") == 3
    for secret in (b"not a real", SEED):
        assert secret.decode("latin-1") not in p.stdout + p.stderr


def test_running_again_gives_the_same_result_and_follows_the_secret(tmp_path):
    pod = Pod(tmp_path)
    assert pod.run().returncode == 0
    first = pod.state()
    p = pod.run()
    assert p.returncode == 0, p.stderr
    assert pod.state() == first

    # A run that died left its temporary file; the Secret's data was replaced
    # (the kubelet swaps ..data) and lost admin-chain.pem.
    stale = os.path.join(pod.credentials, ".prepare.seed")
    with open(stale, "wb") as f:
        f.write(b"half")
    new_data = os.path.join(pod.secret, "..2025_02_01_00_00_00.000000001")
    os.mkdir(new_data)
    for name, content in (("admin-key.pem", KEY), ("seed", SEED[::-1])):
        with open(os.path.join(new_data, name), "wb") as f:
            f.write(content)
        os.chmod(os.path.join(new_data, name), 0o400)
    os.unlink(os.path.join(pod.secret, "admin-chain.pem"))
    os.unlink(os.path.join(pod.secret, "..data"))
    os.symlink(os.path.basename(new_data), os.path.join(pod.secret, "..data"))

    p = pod.run()
    assert p.returncode == 0, p.stderr
    assert pod.state() == {
        "providers": (0, GID, 0o771),
        "admin-key.pem": (UID, GID, 0o400, KEY),
        "seed": (UID, GID, 0o400, SEED[::-1]),
    }
    assert "admin-chain.pem: removed" in p.stdout


def test_only_the_socket_directory(tmp_path):
    pod = Pod(tmp_path)
    p = pod.run(["--user", "65532:65532", "--socket-dir", pod.providers])
    assert p.returncode == 0, p.stderr
    assert pod.state() == {"providers": (0, GID, 0o771)}


def replace_arg(args, flag, value):
    i = args.index(flag)
    return args[:i + 1] + [value] + args[i + 2:]


def drop_arg(args, flag):
    i = args.index(flag)
    return args[:i] + args[i + 2:]


# (what is wrong, how to make it so, exit status, what stderr must say)
BAD = [
    ("no --user", lambda pod, a: drop_arg(a, "--user"), 2, "missing --user UID:GID"),
    ("root", lambda pod, a: replace_arg(a, "--user", "0:0"), 2, "--user '0:0': want UID:GID"),
    ("a name", lambda pod, a: replace_arg(a, "--user", "nonroot:nonroot"), 2,
     "want UID:GID"),
    ("no gid", lambda pod, a: replace_arg(a, "--user", "65532"), 2, "want UID:GID"),
    ("uid too large", lambda pod, a: replace_arg(a, "--user", "4294967296:1"), 2,
     "want UID:GID"),
    ("path in name", lambda pod, a: a + ["--file", "../seed"], 2, "bad file name '../seed'"),
    ("hidden name", lambda pod, a: a + ["--file", "..data"], 2, "bad file name '..data'"),
    ("named twice", lambda pod, a: a + ["--optional-file", "seed"], 2,
     "file 'seed' named twice"),
    ("from without to", lambda pod, a: drop_arg(a, "--copy-to"), 2,
     "--copy-from and --copy-to go together"),
    ("stray argument", lambda pod, a: a + ["seed"], 2, "unexpected argument 'seed'"),
    ("unknown flag", lambda pod, a: a + ["--mode", "0644"], 2, "unknown flag"),
    ("nothing to do", lambda pod, a: ["--user", "65532:65532"], 2, "nothing to do"),
    ("missing file", lambda pod, a: a + ["--file", "admin-cert.pem"], 1,
     "/admin-cert.pem: No such file or directory"),
    ("no socket dir", lambda pod, a: replace_arg(a, "--socket-dir", pod.providers + "-x"), 1,
     lambda pod: "--socket-dir %s-x: No such file or directory" % pod.providers),
    ("socket dir is a symlink", lambda pod, a: replace_arg(
        a, "--socket-dir", symlink(pod.providers, pod.providers + "-link")), 1,
     lambda pod: "--socket-dir %s-link: a symlink, refused" % pod.providers),
    ("no destination", lambda pod, a: replace_arg(a, "--copy-to", pod.credentials + "-x"), 1,
     lambda pod: "--copy-to %s-x: No such file or directory" % pod.credentials),
]


def symlink(target, path):
    os.symlink(target, path)
    return path


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_change_nothing(tmp_path, case):
    _, make, status, message = case
    pod = Pod(tmp_path)
    before = pod.state()
    p = pod.run(make(pod, pod.args()))
    assert p.returncode == status, (p.stdout, p.stderr)
    assert (message(pod) if callable(message) else message) in p.stderr
    assert p.stderr.startswith("maskinporten-csi-provider prepare: ")
    assert p.stdout == ""
    assert pod.state() == before


def fifo(path):
    os.mkfifo(path)


@pytest.mark.parametrize("what,make,message", [
    ("required file absent", lambda d: os.unlink(os.path.join(d, "seed")),
     "/seed: No such file or directory"),
    ("empty", lambda d: open(os.path.join(d, "..data", "seed"), "wb").close(),
     "/seed is empty (a credential is 1 to 65536 bytes)"),
    ("too large", lambda d: open(os.path.join(d, "..data", "seed"), "ab").write(
        b"x" * 65536), "/seed is too large"),
    ("a directory", lambda d: (os.unlink(os.path.join(d, "seed")),
                               os.mkdir(os.path.join(d, "seed"))),
     "/seed is not a regular file"),
    ("a fifo", lambda d: (os.unlink(os.path.join(d, "seed")), fifo(os.path.join(d, "seed"))),
     "/seed is not a regular file"),
], ids=["absent", "empty", "too-large", "directory", "fifo"])
def test_bad_secret_changes_nothing(tmp_path, what, make, message):
    pod = Pod(tmp_path)
    make(pod.secret)
    before = pod.state()
    p = pod.run()
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert pod.secret + message in p.stderr
    assert pod.state() == before


def test_a_directory_in_the_way_changes_nothing(tmp_path):
    pod = Pod(tmp_path)
    os.mkdir(os.path.join(pod.credentials, "seed"))
    before = pod.state()
    p = pod.run()
    assert p.returncode == 1
    assert pod.credentials + "/seed is a directory, not a file" in p.stderr
    assert pod.state() == before


def test_without_cap_chown_it_says_so(tmp_path):
    pod = Pod(tmp_path)
    before = pod.state()
    p = pod.run(caps=[])
    assert p.returncode == 1
    assert pod.state() == before
    assert "chgrp 65532 %s: Operation not permitted (needs CAP_CHOWN)" % pod.providers \
        in p.stderr
