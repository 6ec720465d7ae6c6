"""Memory and thread checking of the processes the integration tests start.

`make asan`, `make tsan` and `make valgrind` set MCP_SANITIZER_LOGS to a
directory where every instrumented process (`serve` and the CLI subcommands
under ASan/UBSan/TSan log_path, `serve` under valgrind --log-file) writes its
reports. After each test any new non-empty file there fails that test with
the report; reports that appear later (a process outliving its test) fail the
session.
"""

import os
import re

import pytest

from provider_harness import KILLED_ITSELF

LOGS = os.environ.get("MCP_SANITIZER_LOGS")
_reported = set()


# One valgrind leak record: its header line and the stack lines under it.
_LEAK_RECORD = re.compile(r"^==\d+== [\d,]+ (\([^)]*\) )?bytes in [\d,]+ blocks are "
                          r"(definitely|indirectly|possibly) lost in loss record .*\n"
                          r"(==\d+==    (at|by) .*\n)*(==\d+== \n)?", re.M)


def _report_of(name, text):
    """What of a log is a report: all of it, except the leak records of a process
    that killed itself (KILLED_ITSELF), whose other errors still count."""
    m = re.fullmatch(r"valgrind\.(\d+)", name)
    if m and int(m.group(1)) in KILLED_ITSELF:
        text = _LEAK_RECORD.sub("", text)
        if not re.search(r"^==\d+== \S", text, re.M):
            return ""
    return text


def _new_reports():
    if not LOGS or not os.path.isdir(LOGS):
        return []
    found = []
    for name in sorted(os.listdir(LOGS)):
        path = os.path.join(LOGS, name)
        if path in _reported or not os.path.isfile(path) or os.path.getsize(path) == 0:
            continue
        _reported.add(path)
        with open(path, "rb") as f:
            text = _report_of(name, f.read().decode(errors="replace"))
        if text:
            found.append("== %s\n%s" % (path, text[:20000]))
    return found


@pytest.fixture(autouse=True)
def no_memory_errors():
    """Torn down after the test's own fixtures, so their processes have exited."""
    yield
    reports = _new_reports()
    if reports:
        pytest.fail("memory checker report(s):\n" + "\n".join(reports), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    reports = _new_reports()
    if reports:
        print("\nmemory checker report(s) after the last test:\n" + "\n".join(reports))
        session.exitstatus = 1
