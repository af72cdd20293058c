"""Memory ordering under load: two processes on two CPUs exchange millions of
ring entries through xdprx's own ring code (xdprx/testing/stress.py) and check that
nothing is lost, duplicated, reordered or read before it was written."""
import json
import subprocess
import sys

import pytest


def stress(ring: str, count: int, batch: int, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "xdprx.testing.stress", ring, "--count", str(count),
                          "--batch", str(batch), "--timeout", "120", *extra],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("batch", [1, 64])
def test_umem_rings_lose_and_duplicate_nothing(batch):
    """AF_XDP ring layout: FILL-like out, COMPLETION-like back, 4 M entries."""
    r = stress("xsk", 4_000_000 if batch > 1 else 1_000_000, batch)
    c = r["consumer"]
    assert r["done"] and c["done"], r
    assert r["sent"] == r["returned"] == c["received"] == r["count"]
    assert c["seq_errors"] == 0 and c["data_errors"] == 0 and r["dup_errors"] == 0
    assert r["frames_home"]


def test_consumer_ring_loses_and_duplicates_nothing():
    """The receive loop's fan_out/publish/reap against cring_read/cring_release
    in another process: 1 M packets, every payload word checked."""
    r = stress("cring", 1_000_000, 32)
    c = r["consumer"]
    assert r["done"] and c["done"], r
    assert r["sent"] == c["received"] == r["count"] and r["missed"] == 0
    assert c["gaps"] == 0 and c["bad"] == 0 and c["data_errors"] == 0
    assert r["violations"] == 0 and r["frames_home"]


def test_the_checker_catches_a_publish_before_the_writes():
    """Negative control: a producer that publishes its index before writing
    the slots and data is caught (the test above could fail)."""
    r = stress("xsk", 1_000_000, 64, "--broken", "--timeout", "10")
    c = r["consumer"]
    assert c["seq_errors"] + c["data_errors"] + r["dup_errors"] > 0 or not c["done"], r
