"""NAPI deferral (Receiver(napi_defer_us=...), `xdprx run --napi-defer-us`) on
a real veth: set on the device's NAPI instances while receiving, every packet
arrives, the old values come back at close; bad values fail before anything
is attached."""
import json
import socket

import pytest

import xdprx
from xdprx.errors import ConfigError
from xdprx.kernel import napi
from xdprx.testing import XDPRX, DaemonProcess, VethPair, payloads, send_cmd

from conftest import needs_root
from helpers import drain, xdp_attached

GROUP = "239.1.2.3:5000"
pytestmark = needs_root


def settings(pair: VethPair) -> list[tuple[int, int]]:
    with pair.inside("rx"):
        return [(n["defer_hard_irqs"], n["gro_flush_timeout"])
                for n in napi.napis(socket.if_nametoindex(pair.rx_if))]


def test_deferral_while_receiving_every_packet_then_restored():
    n, seed = 3000, 21
    # GRO on: veth keeps its NAPI instance after the XDP program goes, so that
    # what close() puts back can be read
    with VethPair(gro=True) as pair:
        before = settings(pair)
        assert before and all(s == (0, 0) for s in before), before
        with pair.inside("rx"):
            rx = xdprx.Receiver(pair.rx_if, [GROUP], mode="native", napi_defer_us=80)
        with rx:
            assert settings(pair) == [(napi.DEFER_HARD_IRQS, 80_000)] * len(before)
            sender = pair.popen("tx", send_cmd(GROUP, n, seed=seed, rate=50000))
            got = drain(rx, n, timeout=60, sender=sender)
            assert sender.wait(timeout=30) == 0
            st = rx.stats()
        assert st["drops"] == 0 and len(got) == n
        assert [d for _, d, _ in got] == payloads(seed, n), "every payload byte, in order"
        # closed outside the namespace: the netlink socket opened inside it restores
        assert settings(pair) == before
        assert not xdp_attached(pair)


@pytest.mark.parametrize("bad", [-1, 10_001, 2.5, True])
def test_bad_deferral_is_one_clear_error_and_nothing_attached(pair, bad):
    with pair.inside("rx"):
        with pytest.raises(ConfigError, match="napi_defer_us .* out of range; use microseconds"):
            xdprx.Receiver(pair.rx_if, [GROUP], napi_defer_us=bad)
    assert not xdp_attached(pair)


def test_daemon_sets_and_restores_deferral(pair, tmp_path):
    ctl = str(tmp_path / "xrx.sock")
    with DaemonProcess(pair, ctl, [GROUP], "--napi-defer-us", "40") as d:
        assert settings(pair) == [(napi.DEFER_HARD_IRQS, 40_000)]
        doc = pair.run("rx", XDPRX + ["doctor", pair.rx_if, "--json"])
        check = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}["NAPI deferral"]
        assert check["detail"] == "defer-hard-irqs 2, gro-flush-timeout 40 us on 1 of 1 NAPI instance(s)"
        assert d.stop() == 0, d.err
    assert "; NAPI deferral 40 us" in d.out.splitlines()[0], d.out[:400]
    assert all(s == (0, 0) for s in settings(pair))   # restored, or gone with XDP (veth)
    assert not xdp_attached(pair)
