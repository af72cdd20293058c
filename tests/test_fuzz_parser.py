"""Parser fuzzing (xdprx.testing.fuzz): the real XDP program through BPF_PROG_RUN and
the receive loop's parser against an independent scapy reference.

The hand-written frames below are built with scapy (not with the fuzzer's
generator) and carry verdicts written down from bpf/redirect.c's documented
rules, so the reference is checked too, not only compared.
"""
import json
import os
import shutil
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_Router_Alert
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6MLReport, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                                RouterAlert)
from scapy.layers.l2 import ARP, LLC, Dot1AD, Dot1Q, Dot3, Ether
from scapy.packet import Raw

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF_PROG_RUN needs root")

from xdprx.testing import fuzz
from xdprx.testing.fuzz import EXT_LIMIT, FRAGMENT, MALFORMED, NA, PASS, REDIRECT  # noqa: E402

CI_FRAMES = int(os.environ.get("XDPRX_FUZZ_FRAMES", "50000"))
SEED = int(os.environ.get("XDPRX_FUZZ_SEED", "16"))

MAC4, MAC6, SRC = "01:00:5e:01:02:03", "33:33:00:00:12:34", "02:00:00:00:00:02"
S4, S6 = "10.0.0.2", "fe80::2"


def e4(*layers, vlans=()):
    """Ethernet (+ tags) + IPv4 to 239.1.2.3 unless the IP layer says otherwise."""
    p = Ether(dst=MAC4, src=SRC)
    for v in vlans:
        p = p / v
    for layer in layers:
        p = p / layer
    return bytes(p)


def e6(*layers, vlans=()):
    p = Ether(dst=MAC6, src=SRC)
    for v in vlans:
        p = p / v
    for layer in layers:
        p = p / layer
    return bytes(p)


def ip4(**kw):
    kw.setdefault("dst", "239.1.2.3")
    return IP(src=S4, **kw)


def ip6(**kw):
    kw.setdefault("dst", "ff15::1234")
    return IPv6(src=S6, **kw)


def u(dport=5000, **kw):
    return UDP(sport=40000, dport=dport, **kw)


HBH, DST, RT, FRAG = (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(),
                      IPv6ExtHdrFragment(m=0, offset=0))

# The frame that found the IPv4-mapped bug (seed 1, frame 1391 of the first
# generator version): IPv6 to ::ffff:239.1.2.3, UDP port 5000, one byte. Both the
# XDP program and packet.py matched it to the IPv4 group 239.1.2.3:5000.
MAPPED_FOUND = bytes.fromhex(
    "33330000123402000000000286dd6a401c180009118cfe80000000000000455022b5293d4424"
    "00000000000000000000ffffef0102037ace13880009f66f6e")

# (name, frame, verdict, payload or None, subscription id or None); the ids are
# the indices of fuzz.GROUPS
CASES = [
    # IPv4
    ("v4", e4(ip4(), u(), b"hello"), REDIRECT, b"hello", 0),
    ("v4 second port", e4(ip4(), u(5001), b"p5001"), REDIRECT, b"p5001", 1),
    ("v4 other group", e4(ip4(dst="239.255.0.1"), u(6000), b"g2"), REDIRECT, b"g2", 2),
    ("v4 empty payload", e4(ip4(dst="224.0.1.129"), u(319)), REDIRECT, b"", 3),
    ("v4 unsubscribed group", e4(ip4(dst="239.1.2.4"), u(), b"x"), PASS, None, None),
    ("v4 unsubscribed port", e4(ip4(), u(5002), b"x"), PASS, None, None),
    ("v4 unicast", e4(ip4(dst="10.0.0.1"), u(), b"x"), PASS, None, None),
    ("v4 router alert option", e4(ip4(options=[IPOption_Router_Alert()]), u(), b"ra"),
     REDIRECT, b"ra", 0),
    ("v4 ihl 15", e4(ip4(options=[IPOption_RR(routers=["1.2.3.4"] * 9)]), u(), b"ihl15"),
     REDIRECT, b"ihl15", 0),
    ("v4 ihl 4", e4(ip4(ihl=4), u(), b"x"), MALFORMED, None, None),
    ("v4 ihl 0", e4(ip4(ihl=0), u(), b"x"), MALFORMED, None, None),
    ("v4 version 6 behind 0x0800", e4(ip4(version=6), u(), b"x"), MALFORMED, None, None),
    ("v4 version 5", e4(ip4(version=5), u(), b"x"), MALFORMED, None, None),
    ("v4 total length below ihl", e4(ip4(len=19), u(), b"x"), MALFORMED, None, None),
    ("v4 total length beyond the frame", e4(ip4(len=300), u(), b"x"), MALFORMED, None, None),
    ("v4 total length cuts the udp header", e4(ip4(len=24), u(), b"x"), MALFORMED, None, None),
    ("v4 DF: not a fragment", e4(ip4(flags="DF"), u(), b"df"), REDIRECT, b"df", 0),
    ("v4 first fragment", e4(ip4(flags="MF"), u(), b"x" * 16), FRAGMENT, None, None),
    ("v4 middle fragment", e4(ip4(flags="MF", frag=100, proto=17), Raw(b"y" * 16)),
     FRAGMENT, None, None),
    ("v4 last fragment", e4(ip4(frag=100, proto=17), Raw(b"z" * 16)), FRAGMENT, None, None),
    ("v4 middle fragment behind a tag", e4(ip4(flags="MF", frag=9, proto=17), Raw(b"t" * 8),
                                           vlans=[Dot1Q(vlan=7)]), FRAGMENT, None, None),
    ("v4 last fragment with options", e4(ip4(frag=7, proto=17, options=[IPOption_Router_Alert()]),
                                         Raw(b"o" * 8)), FRAGMENT, None, None),
    ("v4 tcp fragment: not counted", e4(ip4(flags="MF"), TCP()), PASS, None, None),
    ("v4 tcp", e4(ip4(), TCP(dport=5000)), PASS, None, None),
    ("v4 icmp", e4(ip4(), ICMP()), PASS, None, None),
    ("v4 tcp with a lying total length", e4(ip4(len=999), TCP()), PASS, None, None),
    # UDP lengths and checksums
    ("udp length beyond the datagram", e4(ip4(), u(len=100), b"abcd"), MALFORMED, None, None),
    ("udp length 4", e4(ip4(), u(len=4), b"abcd"), MALFORMED, None, None),
    ("udp length 0", e6(ip6(), u(len=0), b"abcd"), MALFORMED, None, None),
    ("udp length shorter than the datagram", e4(ip4(), u(len=10), b"keep" + b"trailer"),
     REDIRECT, b"ke", 0),
    ("udp length 8, data after it", e6(ip6(), u(len=8), b"trailer"), REDIRECT, b"", 4),
    ("udp checksum zero", e4(ip4(chksum=0), u(chksum=0), b"csum0"), REDIRECT, b"csum0", 0),
    ("udp checksum wrong", e6(ip6(), u(chksum=0x1234), b"bad"), REDIRECT, b"bad", 4),
    # VLAN tags
    ("802.1Q", e4(ip4(), u(), b"q", vlans=[Dot1Q(vlan=10)]), REDIRECT, b"q", 0),
    ("802.1ad + 802.1Q", e6(ip6(), u(), b"qinq", vlans=[Dot1AD(vlan=1), Dot1Q(vlan=2)]),
     REDIRECT, b"qinq", 4),
    ("802.1Q + 802.1ad", e4(ip4(), u(), b"qq", vlans=[Dot1Q(vlan=1), Dot1AD(vlan=2)]),
     REDIRECT, b"qq", 0),
    ("three tags", e4(ip4(), u(), b"x", vlans=[Dot1AD(), Dot1Q(), Dot1Q()]), PASS, None, None),
    ("tag cut short", bytes(Ether(dst=MAC4, src=SRC, type=0x8100)) + b"\x00\x05", MALFORMED,
     None, None),
    # other EtherTypes
    ("arp", bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=SRC) / ARP()), PASS, None, None),
    ("802.3 + llc", bytes(Dot3(dst=MAC4, src=SRC) / LLC() / Raw(b"x" * 40)), PASS, None, None),
    ("ethernet cut short", bytes(Ether(dst=MAC4, src=SRC))[:13], MALFORMED, None, None),
    ("ethernet padding", e4(ip4(), u(), b"pad") + bytes(20), REDIRECT, b"pad", 0),
    # IPv6
    ("v6", e6(ip6(), u(), b"six"), REDIRECT, b"six", 4),
    ("v6 mdns group", e6(ip6(dst="ff02::fb"), u(5353), b"m"), REDIRECT, b"m", 5),
    ("v6 unsubscribed", e6(ip6(dst="ff15::1235"), u(), b"x"), PASS, None, None),
    ("v6 version 4 behind 0x86dd", e6(ip6(version=4), u(), b"x"), MALFORMED, None, None),
    ("v6 payload length beyond the frame", e6(ip6(plen=500), u(), b"x"), MALFORMED, None, None),
    ("v6 payload length cuts udp", e6(ip6(plen=6), u(), b"x"), MALFORMED, None, None),
    ("v6 hop-by-hop", e6(ip6(), HBH, u(), b"hbh"), REDIRECT, b"hbh", 4),
    ("v6 routing, segments left 0",
     e6(ip6(dst="ff3e::8000:1"), IPv6ExtHdrRouting(addresses=["2001:db8::1"], segleft=0),
        u(7000), b"rt"), REDIRECT, b"rt", 6),
    ("v6 atomic fragment", e6(ip6(dst="ff05::1:3"), FRAG, u(), b"atomic"), REDIRECT,
     b"atomic", 7),
    ("v6 four extension headers", e6(ip6(), HBH, DST, RT, FRAG, u(), b"four"), REDIRECT,
     b"four", 4),
    ("v6 five extension headers", e6(ip6(), HBH, DST, RT, DST, DST, u(), b"5"), EXT_LIMIT,
     None, None),
    ("v6 seven extension headers", e6(ip6(), DST, DST, DST, DST, DST, DST, DST, u(), b"7"),
     EXT_LIMIT, None, None),
    ("v6 five, the fifth a fragment", e6(ip6(), HBH, DST, RT, DST,
                                         IPv6ExtHdrFragment(m=1), u(), b"5"),
     EXT_LIMIT, None, None),
    ("v6 routing, segments left 1",
     e6(ip6(), IPv6ExtHdrRouting(addresses=["2001:db8::1"], segleft=1), u(), b"x"), PASS,
     None, None),
    ("v6 first fragment", e6(ip6(), IPv6ExtHdrFragment(m=1), u(), b"f" * 16), FRAGMENT,
     None, None),
    ("v6 middle fragment", e6(ip6(), HBH, IPv6ExtHdrFragment(m=1, offset=10, nh=17),
                              Raw(b"m" * 16)), FRAGMENT, None, None),
    ("v6 last fragment", e6(ip6(), IPv6ExtHdrFragment(offset=10, nh=17), Raw(b"l" * 16)),
     FRAGMENT, None, None),
    ("v6 first fragment behind destination options",
     e6(ip6(), DST, IPv6ExtHdrFragment(m=1), u(), b"d" * 16), FRAGMENT, None, None),
    ("v6 last fragment behind routing",
     e6(ip6(), RT, IPv6ExtHdrFragment(offset=3, nh=17), Raw(b"r" * 16)), FRAGMENT, None, None),
    ("v6 icmpv6 fragment: not counted", e6(ip6(), IPv6ExtHdrFragment(m=1),
                                           ICMPv6EchoRequest()), PASS, None, None),
    ("v6 hop-by-hop second", e6(ip6(), DST, HBH, u(), b"x"), MALFORMED, None, None),
    ("v6 hop-by-hop third", e6(ip6(), DST, RT, HBH, u(), b"x"), MALFORMED, None, None),
    ("v6 routing, segments left 2, behind hop-by-hop",
     e6(ip6(), HBH, IPv6ExtHdrRouting(addresses=["2001:db8::1", "2001:db8::2"], segleft=2), u(),
        b"x"), PASS, None, None),
    ("v6 version 0", e6(ip6(version=0), u(), b"x"), MALFORMED, None, None),
    ("v6 esp", e6(ip6(nh=50), Raw(b"\0" * 16)), PASS, None, None),
    ("v6 udp checksum zero (not checked)", e6(ip6(), u(chksum=0), b"z"), REDIRECT, b"z", 4),
    ("lldp", bytes(Ether(dst="01:80:c2:00:00:0e", src=SRC, type=0x88CC)) + bytes(32), PASS,
     None, None),
    ("v6 destination options longer than the payload",
     e6(ip6(plen=16), IPv6ExtHdrDestOpt(len=4, autopad=0), Raw(b"\0" * 40)), MALFORMED,
     None, None),
    ("v6 hop-by-hop cut by the payload length", e6(ip6(plen=4), HBH, u(), b"x"), MALFORMED,
     None, None),
    ("v6 icmpv6", e6(ip6(), ICMPv6EchoRequest()), PASS, None, None),
    ("v6 hop-by-hop + mld", e6(ip6(dst="ff02::16"), IPv6ExtHdrHopByHop(options=[RouterAlert()]),
                               ICMPv6MLReport()), PASS, None, None),
    ("v6 no next header", e6(ip6(nh=59), Raw(b"")), PASS, None, None),
    ("v6 tcp with a lying payload length", e6(ip6(plen=999), TCP()), PASS, None, None),
    # the bug this fuzzer found: IPv4-mapped destinations matched IPv4 groups
    ("v6 to ::ffff:239.1.2.3 (found)", MAPPED_FOUND, PASS, None, None),
    ("v6 to ::ffff:239.1.2.3", e6(ip6(dst="::ffff:239.1.2.3"), u(), b"x"), PASS, None, None),
    ("v6 to ::ffff:239.255.0.1 behind dst opts",
     e6(ip6(dst="::ffff:239.255.0.1"), DST, u(6000), b"x"), PASS, None, None),
    # jumbo: the program sees the first 3520 B (BPF_PROG_RUN), the rest judge it whole
    ("v4 jumbo", e4(ip4(), u(), b"J" * 8900), REDIRECT, b"J" * 8900, 0),
    ("v6 jumbo behind two headers", e6(ip6(), HBH, DST, u(), b"j" * 8800), REDIRECT,
     b"j" * 8800, 4),
]


@pytest.fixture(scope="module")
def fz():
    with fuzz.Fuzzer(seed=SEED) as f:
        yield f


def test_cases_are_distinct():
    assert len({c[1] for c in CASES}) == len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,frame,verdict,payload,sub", CASES, ids=[c[0] for c in CASES])
def test_hand_written(fz, name, frame, verdict, payload, sub):
    """The reference gives the written-down verdict; the XDP program and the
    user-space parser agree with it."""
    ref = fuzz.reference(frame, fz.subs)
    assert ref[0] == verdict
    if verdict == REDIRECT:
        assert frame[ref[1]:ref[1] + ref[2]] == payload and ref[3] == sub
    r = fz.check([frame])[0]
    assert r["why"] == "", r
    if len(frame) < 14:
        assert r["bpf"] == NA
    elif len(frame) <= fz.linear:
        assert r["bpf"] == verdict
    assert (r["user"][2] >= 0) == (verdict == REDIRECT)


TEMPLATES = {
    "v4 two tags, options": e4(ip4(options=[IPOption_Router_Alert()]), u(), b"abcdefgh",
                               vlans=[Dot1AD(), Dot1Q()]),
    "v4 first fragment": e4(ip4(flags="MF"), u(), b"0123456789"),
    "v6 four extension headers": e6(ip6(), HBH, DST, RT, FRAG, u(), b"abcdefgh"),
    "v6 fragment behind hop-by-hop": e6(ip6(), HBH, IPv6ExtHdrFragment(m=1), u(), b"abc"),
    "v6 five extension headers": e6(ip6(), HBH, DST, RT, DST, DST, u(), b"x"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_truncation(fz, name):
    """Each template cut at every byte: all three agree, and every cut short of
    the whole frame is malformed (the IP length claims more than is there)."""
    frame = TEMPLATES[name]
    full = fuzz.reference(frame, fz.subs)[0]
    res = fz.check([frame[:n] for n in range(len(frame) + 1)])
    bad = [(n, r["why"]) for n, r in enumerate(res) if r["why"]]
    assert not bad, bad[:5]
    verdicts = [r["reference"][0] for r in res]
    assert verdicts == [MALFORMED] * len(frame) + [full]


def test_fuzz(capsys):
    """CI size: zero disagreements, and every frame class generated and seen
    producing its characteristic verdict."""
    out = fuzz.run(CI_FRAMES, SEED, workers=min(2, os.cpu_count() or 1))
    with capsys.disabled():
        print("\n" + json.dumps({k: v for k, v in out.items() if k not in ("classes", "examples")}))
    assert out["frames"] == CI_FRAMES
    assert out["disagreements"] == 0, "\n".join(fuzz.describe(e) for e in out["examples"])
    assert out["coverage_missing"] == []
    assert set(out["classes"]) == set(fuzz.CLASSES)
    assert all(sum(c.values()) >= CI_FRAMES // 400 for c in out["classes"].values())
    for v in (PASS, MALFORMED, FRAGMENT, REDIRECT, EXT_LIMIT):
        assert out["bpf_verdicts"].get(v, 0) > CI_FRAMES // 100, v
    assert out["user_accepted"] == out["verdicts"][REDIRECT]


def test_generator_is_reproducible():
    a = [fuzz.generate(SEED, i) for i in range(200)]
    assert a == [fuzz.generate(SEED, i) for i in range(200)]
    assert fuzz.generate(SEED, 7) != fuzz.generate(SEED + 1, 7)


# Seeded bugs: the fuzzer must notice each (so a pass means something).
MUTANTS = {
    "extension header bound 3": ("#define MAX_EXT_HDRS 4", "#define MAX_EXT_HDRS 3"),
    "fragment M bit ignored": ("bpf_htons(0xfff9)", "bpf_htons(0xfff8)"),
    "segments left ignored": ("((struct ipv6_rt_hdr *)p)->segments_left)",
                              "((struct ipv6_rt_hdr *)p)->segments_left && 0)"),
    "one vlan tag": ("for (i = 0; i < 2; i++) {\n\t\tstruct vlan_hdr",
                     "for (i = 0; i < 1; i++) {\n\t\tstruct vlan_hdr"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_catches_a_broken_program(name, tmp_path, monkeypatch):
    from xdprx.kernel import bpfprog
    old, new = MUTANTS[name]
    src = bpfprog.SOURCE.read_text()
    assert old in src
    (tmp_path / "redirect.c").write_text(src.replace(old, new))
    monkeypatch.setenv("XDPRX_CACHE_DIR", str(tmp_path))  # the mutant's object goes there
    build = bpfprog.build
    monkeypatch.setattr(bpfprog, "build", lambda: build(tmp_path / "redirect.c"))
    out = fuzz.run(3000, SEED, workers=1)
    assert out["disagreements"] > 0


def test_catches_a_broken_user_parser(monkeypatch):
    parse = fuzz.UserParser.parse

    def off_by_one(self, umem, slots):
        return [(o + 1, n, s) if s >= 0 else (o, n, s) for o, n, s in parse(self, umem, slots)]
    monkeypatch.setattr(fuzz.UserParser, "parse", off_by_one)
    assert fuzz.run(500, SEED, workers=1)["disagreements"] > 0


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_test_run_opts_layout(tmp_path):
    """BpfTestRunOpts matches struct bpf_test_run_opts of the installed libbpf."""
    fields = [f for f, _ in fuzz.BpfTestRunOpts._fields_]
    c = tmp_path / "layout.c"
    c.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <bpf/bpf.h>\n"
                 "int main(void) {\n" + "".join(
                     f'printf("%zu ", offsetof(struct bpf_test_run_opts, {f}));\n' for f in fields)
                 + 'printf("%zu\\n", sizeof(struct bpf_test_run_opts));\nreturn 0;\n}\n')
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(c)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True,
                                          check=True).stdout.split()]
    want = [getattr(fuzz.BpfTestRunOpts, f).offset for f in fields]
    assert got == want + [fuzz.ctypes.sizeof(fuzz.BpfTestRunOpts)]


def test_cli_json_summary():
    r = subprocess.run([fuzz.sys.executable, "-m", "xdprx.service.cli", "stress", "fuzz", "--frames", "300",
                        "--seed", "5", "--workers", "1", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["frames"] == 300 and out["seed"] == 5 and out["disagreements"] == 0
