"""`make bench`'s harness, run small (--quick) so it cannot rot between benchmark runs.

Timings are not asserted here (they belong to the benchmark's own output); what is asserted
is that every section still produces its figures and that the request counts the emulator
saw are the ones the DigDir issue allows, which hold at any size.
"""

import json
import os
import subprocess
import sys

import pytest

from provider_harness import WRAPPER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHDIR = os.environ.get("MCP_BENCHDIR") or os.path.join(ROOT, "build", "bench")

# Figures whose targets are request or error counts, not timings.
COUNTED = ["warm.errors@1", "warm.errors@4", "warm.errors@16", "cold.new.errors",
           "cold.new.admin_tokens", "cold.new.client_listings", "cold.new.creates",
           "cold.new.jwks_reads", "cold.new.jwks_uploads", "cold.restart.digdir_writes",
           "cold.restart.errors", "burst.errors", "burst.creates", "burst.jwks_uploads",
           "burst.admin_tokens", "burst.client_listings", "rotation.digdir_requests",
           "rotation.errors", "mem.errors"]


@pytest.mark.skipif(bool(WRAPPER), reason="the bench runs its own processes unwrapped")
def test_quick_bench_produces_every_section(tmp_path):
    assert os.access(os.path.join(BENCHDIR, "bench_client"), os.X_OK), \
        "no bench_client in %s: run the tests through make" % BENCHDIR
    out = tmp_path / "bench.json"
    env = dict(os.environ, MCP_BENCHDIR=BENCHDIR)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench", "run.py"),
                        "--quick", "--json", str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    rows = {row["figure"]: row for row in json.loads(out.read_text())}

    for prefix in ("warm.median@16", "warm.throughput@16", "cold.new.wall", "burst.wall",
                   "rotation.cpu_per_1000_mounts", "mem.idle_hwm", "mem.idle_probed_hwm",
                   "keys.derive_median"):
        assert prefix in rows, sorted(rows)
    failed = {f: rows[f]["value"] for f in COUNTED if not rows[f]["ok"]}
    assert not failed, failed
    # A Mount answer holds a private key: the table must never carry one.
    assert "PRIVATE KEY" not in r.stdout and '"d":' not in r.stdout
