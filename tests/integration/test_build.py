"""The Makefile's promises, checked by running make on a scratch build directory.

- CFLAGS, CPPFLAGS, LDFLAGS and LDLIBS from the command line extend the project's
  flags: every compile and link line (objects, generated protobuf-c, unit tests,
  benchmarks, fuzzers) keeps -std=c11, the warnings and the hardening.
- A plain build installs nothing: when a package is missing it fails, naming
  `make deps`. The README's commands and CI's targets run `make deps` first.

Nothing is built: `make -n` prints the commands, and the runs that do execute
stop at the dependency check. apt-get, dpkg-query, id and sudo are replaced on
PATH, so the checks run the same as root or not, and nothing is ever installed.
"""

import glob
import os
import re
import shlex
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER = ["CFLAGS=-O0 -DMCP_USER_CFLAGS", "CPPFLAGS=-DMCP_USER_CPPFLAGS",
        "LDFLAGS=-Lmcp-user-ldflags", "LDLIBS=-lmcp_user_ldlibs"]
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes",
            "-Wwrite-strings", "-Wformat=2"]
HARDENING = ["-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-fPIE"]


def clean_env(**extra):
    """The environment without the make variables of a make that runs this test."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "CFLAGS",
                        "CPPFLAGS", "LDFLAGS", "LDLIBS", "BUILD", "CI", "SANITIZE", "OPT")}
    env.update(extra)
    return env


def make(*args, env=None, timeout=120):
    return subprocess.run(["make", "--no-print-directory", "-C", ROOT] + list(args),
                          capture_output=True, text=True, env=env or clean_env(),
                          timeout=timeout)


def targets(build):
    """Every file target that compiles or links: the program, unit tests, benches, fuzzers."""
    def names(pattern, sub):
        return [os.path.join(build, sub, os.path.splitext(os.path.basename(p))[0])
                for p in sorted(glob.glob(os.path.join(ROOT, pattern)))]
    units = names("tests/unit/test_*.c", "tests")
    benches = names("tests/bench/*.c", "bench")
    fuzzers = names("tests/fuzz/fuzz_*.c", "fuzz")
    assert units and benches and fuzzers
    return [os.path.join(build, "maskinporten-csi-provider")] + units + benches + fuzzers


def compiler_lines(out):
    """The compile (-c) and link lines of `make -n` output, as argument lists."""
    compiles, links = [], []
    for line in out.replace("\\\n", " ").splitlines():
        if line.startswith("cc "):
            words = shlex.split(line)
            (compiles if "-c" in words else links).append(words)
    return compiles, links


def compiles_c(words):
    """Whether a compiler line compiles C source (not only links objects)."""
    return any(w.endswith(".c") for w in words)


def after(words, first, then):
    """Whether `then` comes after the last `first` (the later flag wins)."""
    return first in words and then in words and \
        len(words) - 1 - words[::-1].index(first) < words.index(then)


def test_command_line_flags_extend_the_projects(tmp_path):
    build = str(tmp_path / "b")
    want = targets(build)
    r = make("-n", "-B", "BUILD=" + build, *USER, *want)
    assert r.returncode == 0, r.stderr
    compiles, links = compiler_lines(r.stdout)
    nsrc = len(glob.glob(os.path.join(ROOT, "src", "*.c")))
    assert len(compiles) == nsrc + 1, r.stdout  # src/*.c and the generated protobuf-c
    assert len(links) == len(want), r.stdout
    assert sum(not compiles_c(w) for w in links) == 1  # the program links objects only
    for words in compiles + [w for w in links if compiles_c(w)]:
        line = " ".join(words)
        for flag in ["-std=c11", "-DMCP_USER_CFLAGS", "-DMCP_USER_CPPFLAGS", "-O0",
                     "-D_GNU_SOURCE", "-DOPENSSL_NO_DEPRECATED"] + HARDENING:
            assert flag in words, "%s missing from: %s" % (flag, line)
        assert after(words, "-O2", "-O0"), "the user's -O0 must come last: " + line
        generated = any(w.endswith("provider.pb-c.c") for w in words)
        for flag in ([] if generated else WARNINGS + ["-MMD"]):
            assert flag in words, "%s missing from: %s" % (flag, line)
    for words in links:
        line = " ".join(words)
        for flag in ["-pie", "-Wl,-z,relro,-z,now", "-Lmcp-user-ldflags", "-lmcp_user_ldlibs",
                     "-lpthread"]:
            assert flag in words, "%s missing from: %s" % (flag, line)


def test_ci_and_sanitizer_flags_survive_user_flags(tmp_path):
    build = str(tmp_path / "b")
    prog = os.path.join(build, "maskinporten-csi-provider")
    r = make("-n", "-B", "BUILD=" + build, "CI=true", "SANITIZE=-fsanitize=thread", *USER, prog)
    assert r.returncode == 0, r.stderr
    compiles, links = compiler_lines(r.stdout)
    assert compiles and len(links) == 1
    for words in compiles:
        assert "-fsanitize=thread" in words and "-std=c11" in words, words
        if not any(w.endswith("provider.pb-c.c") for w in words):
            assert "-Werror" in words, words
    assert "-fsanitize=thread" in links[0] and "-Lmcp-user-ldflags" in links[0], links[0]


@pytest.fixture
def fake_system(tmp_path):
    """PATH with apt-get, apt, sudo that only record their calls, dpkg-query that
    knows no package and id that says root: were `make deps` to run, it would try
    to install, and the record shows it."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    scripts = {
        "apt-get": 'echo "apt-get $*" >> %s; exit 1' % calls,
        "apt": 'echo "apt $*" >> %s; exit 1' % calls,
        "sudo": 'echo "sudo $*" >> %s; exit 1' % calls,
        "dpkg-query": "exit 1",
        "id": "echo 0",
    }
    for name, body in scripts.items():
        path = bindir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(stat.S_IRWXU)
    empty = tmp_path / "no-pkgconfig"
    empty.mkdir()
    env = clean_env(PATH="%s:%s" % (bindir, os.environ.get("PATH", "/usr/bin:/bin")),
                    PKG_CONFIG_LIBDIR=str(empty), PKG_CONFIG_PATH="")
    return env, calls


def test_plain_build_installs_nothing_and_names_make_deps(tmp_path, fake_system):
    env, calls = fake_system
    build = tmp_path / "b"
    r = make("BUILD=%s" % build, env=env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert not calls.exists(), "a plain build ran: " + calls.read_text()
    assert "make deps" in out, out
    assert re.search(r"missing:.*\bgrpc_unsecure\b", out), out
    assert not (build / "obj").exists()


def ci_goals():
    """The targets .ci/run runs, but `image`, whose script installs podman itself."""
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        goals = re.findall(r"^\s*step make (\S+)", f.read(), re.M)
    assert "test" in goals, goals
    return sorted(set(goals) - {"image"})


@pytest.mark.parametrize("goal", sorted(set(["run", "test"] + ci_goals())))
def test_readme_and_ci_targets_install_first(tmp_path, fake_system, goal):
    """`make run`, `make test` and CI's targets on a machine without the packages:
    `make deps` runs first and asks apt-get for them (here it fails, so make stops)."""
    env, calls = fake_system
    r = make("BUILD=%s" % (tmp_path / "b"), goal, env=env)
    assert r.returncode != 0, r.stdout + r.stderr
    assert calls.exists(), "make %s did not run make deps: %s" % (goal, r.stdout + r.stderr)
    assert "apt-get install" in calls.read_text() or "apt-get update" in calls.read_text()


def test_make_deps_with_everything_installed_needs_no_root(tmp_path, fake_system):
    """This machine has the packages: `make deps` says so as any user and installs nothing."""
    env, calls = fake_system
    os.unlink(os.path.join(env["PATH"].split(":")[0], "dpkg-query"))  # the real one
    fake_id = os.path.join(env["PATH"].split(":")[0], "id")
    with open(fake_id, "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\necho 1000\n")
    r = make("deps", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed" in r.stdout
    assert not calls.exists(), calls.read_text()
