"""Runs a program of an unpacked image the way a container runtime would, where
podman itself cannot start containers: in a private mount namespace, chrooted
into the image's root filesystem mounted read-only, with /proc and /dev, the
volumes bind-mounted, a clean environment, no_new_privs, and either an
unprivileged uid:gid (no capabilities) or root limited to named capabilities.

    command(rootfs, ["/usr/local/bin/maskinporten-csi-provider", "version"],
            user=(65532, 65532), binds=[(host_dir, "/var/run/x", False)])

returns the argv to hand to subprocess: `unshare --mount` runs this file,
which sets up the mounts and then execs the program (same pid throughout, so
/proc/PID of the Popen is the program's). Needs root on the host.
"""

import ctypes
import json
import os
import subprocess
import sys

PYTHON = "/usr/bin/python3"
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
# capability(7) numbers, the ones a manifest may name.
CAPS = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
        "kill": 5, "setgid": 6, "setuid": 7, "net_bind_service": 10, "sys_chroot": 18}
# Container runtimes create these in the container's root before it starts.
MOUNT_DIRS = ("proc", "dev")


def command(rootfs, argv, user=(65532, 65532), caps=(), binds=(), env=None):
    """The argv that runs argv (paths inside the image) in rootfs. binds are
    (host path, path in the image, read_only); caps apply to root only."""
    spec = {"rootfs": os.path.abspath(rootfs), "argv": list(argv), "user": list(user),
            "caps": [c.lower() for c in caps], "binds": [list(b) for b in binds],
            "env": dict(env or {})}
    return ["unshare", "--mount", "--propagation", "private", PYTHON, os.path.abspath(__file__),
            json.dumps(spec)]


def _mount(*args):
    subprocess.run(["mount"] + list(args), check=True)


def _mount_point(rootfs, inside, like):
    """Creates the mount point for a bind of `like` at `inside`, as a runtime does."""
    target = os.path.join(rootfs, inside.lstrip("/"))
    if os.path.isdir(like):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    return target


def _enter(spec):
    rootfs = spec["rootfs"]
    for d in MOUNT_DIRS:
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    targets = [(_mount_point(rootfs, inside, host), host, ro) for host, inside, ro in spec["binds"]]

    # The root first, so that the mounts below land on top of it.
    _mount("--bind", rootfs, rootfs)
    _mount("-t", "proc", "proc", os.path.join(rootfs, "proc"))
    _mount("--bind", "/dev", os.path.join(rootfs, "dev"))
    for target, host, ro in targets:
        _mount("--bind", host, target)
        if ro:
            _mount("-o", "remount,bind,ro", target)
    _mount("-o", "remount,bind,ro", rootfs)

    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(rootfs)
    os.chdir("/")
    uid, gid = spec["user"]
    keep = {CAPS[c] for c in spec["caps"]}
    if uid == 0:
        # After exec, root's capabilities are its bounding set: drop the rest.
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
        for cap in range(last + 1):
            if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP %d" % cap)
    else:
        # setuid away from 0 clears every capability.
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOSTNAME": "image-test"}
    env.update(spec["env"])
    os.execve(spec["argv"][0], spec["argv"], env)


if __name__ == "__main__":
    _enter(json.loads(sys.argv[1]))
