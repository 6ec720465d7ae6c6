"""`serve` as an operator meets it: --check, missing and bad configuration."""

import os
import re
import subprocess

from provider_harness import ROOT, SLOW, cli, upstream_args, write_seed


def serve(*args, env=None):
    return subprocess.run(cli("serve", *args), capture_output=True, text=True, timeout=60 * SLOW,
                          env=env)


def test_check_validates_everything_and_exits(emulator, tmp_path):
    seed = write_seed(str(tmp_path / "seed"))
    r = serve("--check", "--socket", str(tmp_path / "s.sock"), *upstream_args(emulator, seed))
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout and "889640782" in r.stdout
    assert not os.path.exists(tmp_path / "s.sock")


def test_check_fails_when_admin_credentials_are_refused(emulator, tmp_path):
    seed = write_seed(str(tmp_path / "seed"))
    emulator.settings(revoke_admin=True)
    r = serve("--check", *upstream_args(emulator, seed))
    assert r.returncode == 1
    assert "invalid_grant" in r.stderr


def test_missing_flag_is_named_with_its_variable(emulator, tmp_path):
    seed = write_seed(str(tmp_path / "seed"))
    args = upstream_args(emulator, seed)
    i = args.index("--admin-client-id")
    del args[i:i + 2]
    r = serve("--check", *args)
    assert r.returncode == 1
    assert "--admin-client-id" in r.stderr and "MPCSI_ADMIN_CLIENT_ID" in r.stderr


def test_configuration_from_the_environment(emulator, tmp_path):
    seed = write_seed(str(tmp_path / "seed"))
    args = upstream_args(emulator, seed)
    env = dict(os.environ)
    for flag, value in zip(args[0::2], args[1::2]):
        env["MPCSI_" + flag[2:].upper().replace("-", "_")] = value
    r = serve("--check", env=env)
    assert r.returncode == 0, r.stderr


def test_bad_values_are_usage_errors(tmp_path):
    for args in (["--epoch-length", "91d"], ["--socket-mode", "999"], ["--write-mode", "both"],
                 ["--log-level", "loud"], ["--no-such-flag"]):
        r = serve(*args)
        assert r.returncode == 2, args
        assert "serve:" in r.stderr


def help_flags(*words):
    """The flags a command's --help lists."""
    r = subprocess.run(cli(*words, "--help"), capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"^  --([a-z0-9-]+)\s+MPCSI_", r.stdout, re.M))


def test_each_commands_help_lists_its_own_flags():
    helps = {
        "serve": help_flags("serve"),
        "mount": help_flags("mount"),
        "token": help_flags("token"),
        "client": help_flags("client"),
        "keys": help_flags("keys", "derive"),
    }
    own = {
        "serve": {"cluster-name", "seed-file", "socket", "workers", "metrics-addr", "probe-addr",
                  "socket-wait", "queue-bytes", "connection-idle", "shutdown-grace",
                  "max-message", "digdir-url", "ca-file"},
        "mount": {"socket", "namespace", "service-account", "dir", "scopes", "params"},
        "token": {"dir", "json", "scopes", "ca-file", "https-proxy", "request-timeout"},
        "client": {"digdir-url", "admin-key-file", "seed-file", "permanent",
                   "drop-foreign-keys", "json", "ca-file", "state-file", "socket",
                   "scope-prefix"},
        "keys": {"seed-file", "client-id", "epoch", "at", "private", "epoch-length"},
    }
    foreign = {
        "serve": {"namespace", "service-account", "dir", "permanent", "private", "client-id",
                  "json"},
        "mount": {"workers", "digdir-url", "seed-file", "permanent", "metrics-addr"},
        "token": {"workers", "socket", "cluster-name", "permanent", "metrics-addr",
                  "namespace", "seed-file", "digdir-url"},
        "client": {"workers", "namespace", "metrics-addr", "private"},
        "keys": {"workers", "socket", "digdir-url", "namespace", "permanent"},
    }
    for cmd, flags in helps.items():
        assert own[cmd] <= flags, (cmd, own[cmd] - flags)
        assert not flags & foreign[cmd], (cmd, flags & foreign[cmd])
    # Every flag of the table belongs to some command.
    with open(os.path.join(ROOT, "src", "config.c"), encoding="utf-8") as f:
        table = f.read()
    names = set(re.findall(r'\{ "([a-z0-9-]+)", T_', table))
    assert names == set().union(*helps.values())
