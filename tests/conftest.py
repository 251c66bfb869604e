"""pytest configuration for tests/: each suite keeps its fixtures in its own module.

Keep this file tiny: import fixtures here, define them elsewhere.
"""

from unit_fixtures import bgs  # noqa: F401  (data-plane unit tests: tests/test_dataplane.py)
