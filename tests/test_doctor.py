"""`xdprx doctor`: the checks on a real veth in an xrx namespace, JSON, exit codes."""
import json
import os
import re
import sys

from xdprx.service import doctor
from xdprx.testing import VethPair, DaemonProcess, send_cmd

from helpers import attach_foreign_xdp, xdp_attached

XDPRX = [sys.executable, "-m", "xdprx.service.cli"]
GROUP = "239.1.2.3:5000"
SYSTEM = {"kernel", "AF_XDP", "BPF JIT", "bpffs", "privileges", "memlock", "libbpf", "libxdp",
          "hugepages", "timers"}
IFACE = {"interface", "driver", "native XDP", "zero-copy", "queues", "XDP program", "NUMA node",
         "IGMP/MLD", "rp_filter"}


def doctor_json(pair, *args):
    r = pair.run("rx", XDPRX + ["doctor", *args, "--json"])
    assert r.returncode in (0, 1), r.stderr
    rep = json.loads(r.stdout)
    return r.returncode, rep, {c["name"]: c for c in rep["checks"]}


def test_doctor_veth_json(pair):
    code, rep, c = doctor_json(pair, pair.rx_if)
    assert code == 0 and rep["ok"] is True and rep["interface"] == pair.rx_if, rep
    assert SYSTEM | IFACE <= set(c)
    assert all(x["status"] in ("ok", "warn", "info") for x in rep["checks"])
    assert c["kernel"]["detail"] == f"Linux {os.uname().release}"
    assert c["AF_XDP"]["status"] == "ok" and "socket(AF_XDP) works" in c["AF_XDP"]["detail"]
    assert c["privileges"]["status"] == "ok" and "CAP_NET_ADMIN" in c["privileges"]["detail"]
    assert c["libbpf"]["status"] == c["libxdp"]["status"] == "ok"
    assert c["libbpf"]["detail"].startswith("1.")
    assert c["interface"]["status"] == "ok" and pair.rx_if in c["interface"]["detail"]
    assert c["driver"]["detail"].startswith("veth")
    # veth: native XDP yes (Linux 6.3+ reports it through netlink), zero-copy no
    assert c["native XDP"]["status"] == "ok" and "redirect" in c["native XDP"]["detail"]
    assert c["zero-copy"]["status"] == "info" and "copy mode" in c["zero-copy"]["detail"]
    assert c["queues"]["detail"].startswith("1 rx, 1 tx")
    assert c["NAPI deferral"]["status"] == "info"
    assert c["NAPI deferral"]["detail"].startswith("no NAPI instance now"), c["NAPI deferral"]
    assert c["XDP program"] == {"name": "XDP program", "status": "ok", "detail": "none attached",
                                "remedy": ""}
    assert c["NUMA node"]["detail"].startswith(("none", "unknown: /sys shows another"))
    t = re.fullmatch(r"a 20 us timed sleep costs ([\d.]+) us of CPU: receive moderation "
                     r"defaults to (\d+) us( \(timers are dear here.*\))?", c["timers"]["detail"])
    assert t and c["timers"]["status"] == "info", c["timers"]
    assert 20 <= int(t[2]) <= 100 and int(t[2]) % 10 == 0 and float(t[1]) > 0
    assert (t[3] is None) == (int(t[2]) == 20) == (c["timers"]["remedy"] == "")
    # system checks only, without an interface
    r = pair.run("rx", XDPRX + ["doctor", "--json"])
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and {x["name"] for x in rep["checks"]} == SYSTEM


def test_doctor_text_and_queues():
    with VethPair(queues=4) as pair:
        r = pair.run("rx", XDPRX + ["doctor", pair.rx_if])
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"xdprx doctor {pair.rx_if}" and lines[-1] == "all checks passed"
        assert any(ln.split()[:2] == ["queues", "info"] and "4 rx, 4 tx" in ln for ln in lines)


def test_doctor_foreign_program_fails_with_remedy(pair, tmp_path):
    attach_foreign_xdp(pair, tmp_path)
    # and strict rp_filter on the interface (a warning, not a failure)
    pair.run("rx", ["sysctl", "-qw", f"net.ipv4.conf.{pair.rx_if}.rp_filter=1"], check=True)
    code, rep, c = doctor_json(pair, pair.rx_if)
    assert code == 1 and rep["ok"] is False
    assert [x["name"] for x in rep["checks"] if x["status"] == "fail"] == ["XDP program"]
    p = c["XDP program"]
    assert "someone_elses" in p["detail"] and "skb mode" in p["detail"]
    assert p["remedy"] == f"if it is not needed: ip link set dev {pair.rx_if} xdpgeneric off"
    assert c["rp_filter"]["status"] == "warn" and c["rp_filter"]["detail"].startswith("1 (strict")
    assert "rp_filter=2" in c["rp_filter"]["remedy"]
    r = pair.run("rx", XDPRX + ["doctor", pair.rx_if])
    assert r.returncode == 1
    assert "-> if it is not needed" in r.stdout and r.stdout.rstrip().endswith("1 check(s) failed")
    assert xdp_attached(pair), "doctor changes nothing"


def test_doctor_with_running_daemon_sees_its_program_and_groups(pair, tmp_path):
    other = "239.1.2.9:5000"
    with DaemonProcess(pair, str(tmp_path / "x.sock"), [GROUP], "--mode", "native"):
        assert pair.run("tx", send_cmd(GROUP, 10, rate=1000)).returncode == 0
        code, rep, c = doctor_json(pair, pair.rx_if, "--group", GROUP, "--group", other)
    assert code == 0, rep
    assert c["XDP program"]["status"] == "info"
    assert "xdprx's own" in c["XDP program"]["detail"] and "native mode" in c["XDP program"]["detail"]
    assert c[f"group {GROUP}"]["status"] == "ok"
    assert c[f"group {other}"]["status"] == "warn" and "not joined" in c[f"group {other}"]["detail"]
    assert "239.1.2.3" in c["IGMP/MLD"]["detail"]


def test_doctor_bad_input_exit_2(pair):
    for args, words in ((["nosuchif0"], ["unknown interface 'nosuchif0'", "ip link"]),
                        ([pair.rx_if, "--group", "198.18.0.7:5000"], ["not a multicast"])):
        r = pair.run("rx", XDPRX + ["doctor", *args])
        assert r.returncode == 2 and r.stdout == ""
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("xdprx: error:"), err
        assert all(w in err for w in words)


def test_doctor_unprivileged_fails_privileges():
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, then run the checks as a user would
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            checks = doctor.run_checks(None)
            os.write(wfd, json.dumps([c.__dict__ for c in checks]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    c = {x["name"]: x for x in json.loads(data)}
    assert c["privileges"]["status"] == "fail" and "missing CAP_NET_ADMIN" in c["privileges"]["detail"]
    assert "AmbientCapabilities" in c["privileges"]["remedy"]
    assert c["privileges"]["detail"].startswith("uid 65534")
