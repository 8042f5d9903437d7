"""The unit lane's promise (no servers) is kept by tests/conftest.py's guard, not by reading: a unit test
that asks for a server fixture, or opens a listening socket, fails; the same test unmarked runs."""
from __future__ import annotations

import pytest

from tests.conftest import REPO

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

PROBES = '''
import http.server
import pytest

@pytest.fixture
def http_dir():
    raise AssertionError("the guard fails the test before its server fixture starts")

def _serve():
    http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler).server_close()

@pytest.mark.unit
def test_unit_asks_for_a_server(http_dir):
    pass

@pytest.mark.unit
def test_unit_listens():
    _serve()

@pytest.mark.unit
def test_unit_without_server():
    assert True

def test_unmarked_listens():
    _serve()
'''


def test_unit_tests_that_start_servers_fail_loudly(pytester):
    guard = (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
    start, end = guard.index("SERVER_FIXTURES = "), guard.index("@pytest.fixture(autouse=True)")
    pytester.makeconftest("import socket\nimport pytest\n" + guard[start:end])
    pytester.makepyfile(test_probe=PROBES)
    pytester.makeini("[pytest]\nmarkers =\n    unit: the unit lane\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_unit_asks_for_a_server uses http_dir*",
                                 "*unit tests use no servers: this test (or a fixture of it) opened a listening*"])


def test_a_unit_test_cannot_launch_a_store_server():
    """This test is itself in the unit lane, so the guard is on: the launcher refuses before any process."""
    import sys

    from tests import stores

    with pytest.raises(pytest.fail.Exception, match="unit tests use no servers: .* started python"):
        stores.Server([sys.executable, "-c", "import time; time.sleep(60)"], stores.free_port(), "/")
