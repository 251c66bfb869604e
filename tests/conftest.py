"""pytest configuration for tests/: each suite keeps its fixtures in its own module.

Keep this file tiny: import fixtures here, define them elsewhere.
"""

from lib import programs

programs.install()  # every program a test spawns must be in scripts/programs.txt

from lib.unit_fixtures import bgs  # noqa: F401,E402  (data-plane unit tests)


import pytest  # noqa: E402

from lib import netns  # noqa: E402


@pytest.fixture(scope="module")
def topo():
    """The client/node/blue/green namespaces of tests/lib/netns.py, one per test module."""
    yield from netns.topology_fixture()
