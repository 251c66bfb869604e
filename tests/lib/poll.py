"""Polling for end-to-end tests: wait, bounded, for a condition that other processes bring about."""

import time


def wait_for(fn, timeout, interval=0.2):
    """Poll fn() until it returns a true value or timeout seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
