"""`serve` as an operator meets it: --check, missing and bad configuration."""

import os
import subprocess

from provider_harness import SLOW, cli, upstream_args, write_seed


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
