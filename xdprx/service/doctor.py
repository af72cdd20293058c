"""`xdprx doctor [IFACE]`: is this machine (and interface) ready for xdprx?

Each check reads the kernel, the libraries or the interface once and says
ok / warn / fail / info, with a remedy for what is not ok. Modelled on
`xdp-loader features` and `bpftool feature probe`. Nothing here changes the
system. Exit code 0 when no check fails, 1 otherwise, 2 for bad input.
"""
from __future__ import annotations

import ctypes
import errno as E
import fcntl
import gzip
import json
import os
import platform
import re
import resource
import shutil
import socket
import struct
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, ConfigError, \
    effective_caps

CAP_IPC_LOCK = 14
AF_XDP = 44
NEED_MEMLOCK = 16 << 20  # the default UMEM (4096 x 2 KiB) plus its rings, with margin
# enum netdev_xdp_act (linux/netdev.h)
XDP_ACT = {1: "basic", 2: "redirect", 4: "ndo-xmit", 8: "xsk-zerocopy", 16: "hw-offload",
           32: "rx-sg", 64: "ndo-xmit-sg"}
XDP_MODES = {1: "native", 2: "skb", 3: "offload", 4: "multi"}
OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Check:
    name: str
    status: str      # ok | warn | fail | info
    detail: str
    remedy: str = ""


def _read(path: str | Path, default: str | None = None) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


# ---- the machine -------------------------------------------------------------
def kernel_config() -> tuple[dict[str, str], str]:
    """CONFIG_* values from /boot/config-$(uname -r) or /proc/config.gz, and the source."""
    boot = Path(f"/boot/config-{platform.release()}")
    try:
        text, src = boot.read_text(), str(boot)
    except OSError:
        try:
            with gzip.open("/proc/config.gz", "rt") as f:
                text, src = f.read(), "/proc/config.gz"
        except OSError:
            return {}, ""
    cfg = dict(m.groups() for m in re.finditer(r"^(CONFIG_\w+)=(.*)$", text, re.M))
    return cfg, src


def check_kernel() -> list[Check]:
    rel = platform.release()
    m = re.match(r"(\d+)\.(\d+)", rel)
    ver = (int(m[1]), int(m[2])) if m else (0, 0)
    out = [Check("kernel", OK if ver >= (5, 9) else FAIL, f"Linux {rel}",
                 "" if ver >= (5, 9) else "xdprx needs Linux 5.9+ (XDP through bpf_link); "
                 "upgrade the kernel (Debian 12: 6.1)")]
    cfg, src = kernel_config()
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
        probe, works = "socket(AF_XDP) works", True
    except OSError as e:
        works = False if e.errno == E.EAFNOSUPPORT else None   # None: cannot tell (EPERM)
        probe = f"socket(AF_XDP): {os.strerror(e.errno)}"
    xsk = cfg.get("CONFIG_XDP_SOCKETS", "not set") if src else "?"
    detail = f"CONFIG_XDP_SOCKETS={xsk} ({src or 'no kernel config found'}); {probe}"
    if works is False or (works is None and src and xsk != "y"):
        out.append(Check("AF_XDP", FAIL, detail,
                         "use a kernel built with CONFIG_XDP_SOCKETS=y (Debian's is)"))
    else:
        out.append(Check("AF_XDP", OK, detail))
    jit = _read("/proc/sys/net/core/bpf_jit_enable")
    jit_cfg = cfg.get("CONFIG_BPF_JIT", "?") if src else "?"
    if jit is None and jit_cfg == "y":  # the sysctl exists in the initial namespace only
        out.append(Check("BPF JIT", INFO, "CONFIG_BPF_JIT=y; bpf_jit_enable is not visible in "
                         "this network namespace (check it outside)"))
    elif jit == "1" or cfg.get("CONFIG_BPF_JIT_ALWAYS_ON") == "y":
        out.append(Check("BPF JIT", OK, f"bpf_jit_enable={jit or '?'}, CONFIG_BPF_JIT={jit_cfg}"))
    else:
        out.append(Check("BPF JIT", WARN, f"bpf_jit_enable={jit or 'absent'}, CONFIG_BPF_JIT={jit_cfg}",
                         "sysctl -w net.core.bpf_jit_enable=1 (the interpreter is much slower)"))
    return out


def check_bpffs() -> Check:
    mounts = _read("/proc/self/mounts", "") or ""
    if any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in mounts.splitlines()):
        return Check("bpffs", OK, "mounted at /sys/fs/bpf")
    return Check("bpffs", WARN, "not mounted at /sys/fs/bpf (xdprx needs no pins; "
                 "libxdp and bpftool do)", "mount -t bpf bpf /sys/fs/bpf")


def check_privileges() -> list[Check]:
    caps = effective_caps()
    have = {n: bool(caps >> c & 1) for n, c in (("NET_ADMIN", CAP_NET_ADMIN), ("NET_RAW", CAP_NET_RAW),
                                                 ("BPF", CAP_BPF), ("SYS_ADMIN", CAP_SYS_ADMIN),
                                                 ("IPC_LOCK", CAP_IPC_LOCK))}
    missing = [n for n in ("NET_ADMIN", "NET_RAW") if not have[n]]
    if not (have["BPF"] or have["SYS_ADMIN"]):
        missing.append("BPF")
    detail = f"uid {os.geteuid()}; " + " ".join(f"CAP_{n}" for n, v in have.items() if v)
    out = [Check("privileges", FAIL if missing else OK,
                 detail + (f"; missing {', '.join('CAP_' + n for n in missing)}" if missing else ""),
                 "run as root, or grant CAP_NET_ADMIN CAP_NET_RAW CAP_BPF (systemd: "
                 "AmbientCapabilities=, see examples/xdprx@.service)" if missing else "")]
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    lim = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 10} KiB"
    if have["IPC_LOCK"] or soft == resource.RLIM_INFINITY or soft >= NEED_MEMLOCK:
        why = " (CAP_IPC_LOCK: not enforced)" if have["IPC_LOCK"] else ""
        out.append(Check("memlock", OK, f"RLIMIT_MEMLOCK {lim}{why}"))
    else:
        out.append(Check("memlock", FAIL, f"RLIMIT_MEMLOCK {lim}, the UMEM needs about "
                         f"{NEED_MEMLOCK >> 20} MiB (more with --frames)",
                         "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity), or grant CAP_IPC_LOCK"))
    return out


def _dpkg_version(pkg: str) -> str:
    if not shutil.which("dpkg-query"):
        return ""
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def check_libraries() -> list[Check]:
    out = []
    try:
        bpf = ctypes.CDLL("libbpf.so.1")
        bpf.libbpf_major_version.restype = bpf.libbpf_minor_version.restype = ctypes.c_uint32
        out.append(Check("libbpf", OK, f"{bpf.libbpf_major_version()}.{bpf.libbpf_minor_version()}"
                         f" (libbpf_major/minor_version; package {_dpkg_version('libbpf1') or '?'})"))
    except (OSError, AttributeError):
        out.append(Check("libbpf", FAIL, "libbpf.so.1 not found (or older than 0.6)",
                         "apt-get install libbpf1 (or run ./install.sh)"))
    try:
        xdp = ctypes.CDLL("libxdp.so.1")
        path = _loaded_path("libxdp.so")
        abi = max(re.findall(rb"LIBXDP_(\d+\.\d+\.\d+)", Path(path).read_bytes()),
                  key=lambda v: tuple(map(int, v.split(b"."))), default=b"?").decode() if path else "?"
        pkg = _dpkg_version("libxdp1")
        if not hasattr(xdp, "xsk_socket__create"):
            out.append(Check("libxdp", FAIL, f"{pkg or abi}: no AF_XDP API (xsk_*), added in 1.2",
                             "install libxdp 1.2 or newer (Debian 12: apt-get install libxdp1)"))
        else:
            out.append(Check("libxdp", OK, f"{pkg or abi} (symbol versions up to LIBXDP_{abi})"))
    except OSError:
        out.append(Check("libxdp", FAIL, "libxdp.so.1 not found",
                         "apt-get install libxdp1 (or run ./install.sh)"))
    return out


def _loaded_path(stem: str) -> str:
    """The file of a shared library this process has mapped (from /proc/self/maps)."""
    for line in (_read("/proc/self/maps", "") or "").splitlines():
        path = line.split()[-1]
        if stem in os.path.basename(path):
            return path
    return ""


def check_hugepages() -> Check:
    free = _read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
    total = _read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    if free is None:
        return Check("hugepages", INFO, "no 2 MiB hugetlb pages on this kernel; 4 KiB pages are used")
    return Check("hugepages", INFO, f"2 MiB: {free} free of {total}" +
                 ("" if int(free) else "; --hugepages auto uses 4 KiB pages "
                  "(sysctl -w vm.nr_hugepages=N to change that)"))


def check_timers() -> Check:
    """What a short timed nap costs here, and the receive moderation it sets."""
    from .. import timers
    cost = timers.nap_cost_ns()
    us = timers.rx_usecs_for(cost)
    detail = (f"a {timers.PROBE_US} us timed sleep costs {cost / 1e3:.1f} us of CPU: receive "
              f"moderation defaults to {us} us")
    if us == timers.MIN_US:
        return Check("timers", INFO, detail)
    return Check("timers", INFO, detail + " (timers are dear here, as in a VM whose timer "
                 "traps to the hypervisor: short naps would cost more than the wake-ups "
                 "they save)", "--rx-usecs 0 for the lowest latency, at a wake-up per packet")


# ---- the interface ----------------------------------------------------------
def driver_info(ifname: str) -> tuple[str, str, str]:
    """(driver, version, bus) from the ETHTOOL_GDRVINFO ioctl, else sysfs."""
    info = bytearray(196)                      # struct ethtool_drvinfo
    struct.pack_into("I", info, 0, 0x3)        # ETHTOOL_GDRVINFO
    buf = ctypes.create_string_buffer(bytes(info), len(info))
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), 0x8946, ifr)  # SIOCETHTOOL
        f = [buf.raw[4 + 32 * i: 36 + 32 * i].split(b"\0")[0].decode() for i in range(4)]
        return f[0], f[1], f[3]
    except OSError:
        link = Path(f"/sys/class/net/{ifname}/device/driver")
        return (os.path.basename(os.readlink(link)) if link.is_symlink() else
                "unknown (no ethtool driver info)"), "", ""


def xdp_features(ifindex: int) -> int | None:
    """NETDEV_A_DEV_XDP_FEATURES through the netdev genetlink family (Linux 6.3+),
    None when the kernel has no such family."""
    from pyroute2.netlink import NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class devmsg(genlmsg):  # linux/netdev.h, NETDEV_CMD_DEV_GET
        nla_map = (("NETDEV_A_DEV_UNSPEC", "none"), ("NETDEV_A_DEV_IFINDEX", "uint32"),
                   ("NETDEV_A_DEV_PAD", "none"), ("NETDEV_A_DEV_XDP_FEATURES", "uint64"))

    try:
        s = GenericNetlinkSocket()
        try:
            s.bind("netdev", devmsg)
            m = devmsg()
            m["cmd"], m["version"] = 1, 1
            m["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
            r = s.nlm_request(m, msg_type=s.prid, msg_flags=NLM_F_REQUEST)
            return int(r[0].get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0)
        finally:
            s.close()
    except Exception:  # no netdev family (kernel < 6.3) or an old pyroute2
        return None


def attached_xdp(ifname: str) -> dict | None:
    """{'id', 'name', 'mode'} of the XDP program on @ifname (from `ip -j -d link`), or None."""
    r = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", ifname],
                       capture_output=True, text=True)
    if r.returncode:
        return None
    xdp = (json.loads(r.stdout or "[{}]")[0]).get("xdp")
    if not xdp:
        return None
    progs = xdp.get("attached") or [xdp]
    p = progs[0]
    return {"id": p.get("prog", {}).get("id"), "name": p.get("prog", {}).get("name", "?"),
            "mode": XDP_MODES.get(p.get("mode"), str(p.get("mode")))}


def joined_groups(ifname: str) -> tuple[set[str], str]:
    """Multicast groups joined on @ifname (/proc/net/igmp, /proc/net/igmp6), and the
    IGMP version in use ('V2', 'V3', ...)."""
    groups, version, cur = set(), "", None
    for line in (_read("/proc/net/igmp", "") or "").splitlines()[1:]:
        if not line.startswith("\t"):
            f = line.split()
            cur = f[1] if len(f) > 1 else None
            if cur == ifname and len(f) > 4:
                version = f[4]
        elif cur == ifname:
            groups.add(socket.inet_ntoa(struct.pack("<I", int(line.split()[0], 16))))
    for line in (_read("/proc/net/igmp6", "") or "").splitlines():
        f = line.split()
        if len(f) >= 3 and f[1] == ifname:
            groups.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(f[2])))
    return groups, version


def link_info(ifname: str) -> dict:
    """Flags, state, MTU and queue counts of @ifname from rtnetlink (this namespace)."""
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        link = ip.get_links(ip.link_lookup(ifname=ifname)[0])[0]
    return {"index": link["index"], "up": bool(link["flags"] & 1),
            "state": link.get_attr("IFLA_OPERSTATE"), "mtu": link.get_attr("IFLA_MTU"),
            "rxq": link.get_attr("IFLA_NUM_RX_QUEUES"), "txq": link.get_attr("IFLA_NUM_TX_QUEUES")}


def sysfs_dir(ifname: str, ifindex: int) -> Path | None:
    """/sys/class/net/@ifname if that sysfs shows this namespace's interface
    (after `nsenter --net`, /sys still shows the namespace it was mounted in)."""
    d = Path("/sys/class/net") / ifname
    return d if _read(d / "ifindex") == str(ifindex) else None


def check_napi(ifindex: int) -> Check:
    """The interface's NAPI deferral (kernel/napi.py), per NAPI instance."""
    from ..kernel import napi
    hint = "many consumers sharing the receive core: xdprx run --napi-defer-us 100 (README, Tuning)"
    try:
        found = napi.napis(ifindex)
    except Exception:
        return Check("NAPI deferral", INFO, "unknown: no NAPI listing in the netdev netlink "
                     "family (an older kernel)", "")
    if not found:
        return Check("NAPI deferral", INFO, "no NAPI instance now (veth has them only while an "
                     "XDP program is attached or GRO is on)", "")
    live = [n for n in found if n["defer_hard_irqs"] and n["gro_flush_timeout"]]
    if not live:
        return Check("NAPI deferral", INFO, f"off on {len(found)} NAPI instance(s)", hint)
    kinds = sorted({(n["defer_hard_irqs"], n["gro_flush_timeout"]) for n in live})
    return Check("NAPI deferral", INFO, ", ".join(
        f"defer-hard-irqs {d}, gro-flush-timeout {t // 1000} us" for d, t in kinds)
        + f" on {len(live)} of {len(found)} NAPI instance(s)", "")


def check_interface(ifname: str, groups: list[str]) -> list[Check]:
    ln = link_info(ifname)
    up, idx = ln["up"], ln["index"]
    out = [Check("interface", OK if up else FAIL, f"{ifname} (ifindex {idx}) {ln['state']}, "
                 f"mtu {ln['mtu']}", "" if up else f"ip link set dev {ifname} up")]
    drv, ver, bus = driver_info(ifname)
    out.append(Check("driver", INFO, " ".join(filter(None, [drv, ver, f"bus {bus}" if bus else ""]))))
    feats = xdp_features(idx)
    if feats is None:
        out.append(Check("native XDP", WARN, "unknown (no netdev netlink family; Linux < 6.3)",
                         "--mode auto tries native and falls back to skb"))
        out.append(Check("zero-copy", INFO, "unknown; Receiver.zerocopy tells once running"))
    else:
        names = ", ".join(n for b, n in XDP_ACT.items() if feats & b) or "none"
        native = bool(feats & 1 and feats & 2)
        out.append(Check("native XDP", OK if native else WARN, f"{'supported' if native else 'not supported'}"
                         f" (XDP features: {names})",
                         "" if native else "only generic XDP here: --mode skb (or auto); slower"))
        zc = feats & 8
        out.append(Check("zero-copy", OK if zc else INFO, "AF_XDP zero-copy supported" if zc else
                         f"not supported by {drv}: AF_XDP copy mode (one copy per packet)"))
    out.append(Check("queues", INFO, f"{ln['rxq']} rx, {ln['txq']} tx (xdprx run receives from all; --queues to choose)"))
    out.append(check_napi(idx))
    prog = attached_xdp(ifname)
    if prog is None:
        out.append(Check("XDP program", OK, "none attached"))
    elif prog["name"] == "xdprx_redirect":
        out.append(Check("XDP program", INFO, f"xdprx's own (id {prog['id']}, {prog['mode']} mode): "
                         "a daemon runs here"))
    else:
        off = "xdpgeneric off" if prog["mode"] == "skb" else "xdp off"
        out.append(Check("XDP program", FAIL, f"{prog['name']} (id {prog['id']}, {prog['mode']} mode) "
                         "is attached; xdprx never replaces it",
                         f"if it is not needed: ip link set dev {ifname} {off}"))
    sysfs = sysfs_dir(ifname, idx)
    node = _read(sysfs / "device/numa_node") if sysfs else None
    out.append(Check("NUMA node", INFO, f"node {node}" if node not in (None, "-1") else
                     "none (virtual device, or a single-node machine)" if sysfs else
                     "unknown: /sys shows another network namespace (mount sysfs in this one)"))
    joined, igmpv = joined_groups(ifname)
    mine = sorted(g for g in joined if not g.startswith(("224.0.0.", "ff02:", "ff01:")))
    out.append(Check("IGMP/MLD", INFO, f"{igmpv or 'IGMP'} on {ifname}; joined: "
                     f"{', '.join(mine) or 'no routable groups'}"))
    for spec in groups:
        from ..groups import Group
        g = Group.parse(spec)
        ok = str(g.addr) in joined
        out.append(Check(f"group {g}", OK if ok else WARN, "joined" if ok else f"not joined on {ifname}",
                         "" if ok else f"start xdprx run {ifname} --group {g} (it joins), "
                         "or check `ip maddr show dev " + ifname + "`"))
    rp = [_read(f"/proc/sys/net/ipv4/conf/{n}/rp_filter", "0") for n in ("all", ifname)]
    eff = max(int(v or 0) for v in rp)
    out.append(Check("rp_filter", WARN if eff == 1 else OK,
                     f"{eff} ({'strict' if eff == 1 else 'loose' if eff == 2 else 'off'}; "
                     f"all={rp[0]}, {ifname}={rp[1]})",
                     f"strict mode drops the kernel's copy of multicast from sources not routed via "
                     f"{ifname} (xdprx's redirected packets bypass it): sysctl -w "
                     f"net.ipv4.conf.{ifname}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"
                     if eff == 1 else ""))
    return out


# ---- the command -------------------------------------------------------------
def run_checks(ifname: str | None = None, groups: list[str] | None = None) -> list[Check]:
    """Every check; ConfigError for an unknown interface or a bad group."""
    if ifname is not None:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            raise ConfigError(f"unknown interface {ifname!r} in this network namespace", E.ENODEV,
                              "check the name with `ip link` (or enter its namespace first)") from None
    for g in groups or []:
        from ..groups import Group
        Group.parse(g)
    checks = check_kernel() + [check_bpffs()] + check_privileges() + check_libraries() + \
        [check_hugepages(), check_timers()]
    if ifname is not None:
        checks += check_interface(ifname, groups or [])
    return checks


def render(checks: list[Check], ifname: str | None) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"xdprx doctor{' ' + ifname if ifname else ''}",
             f"  {'check':{w}}  status  detail"]
    for c in checks:
        lines.append(f"  {c.name:{w}}  {c.status:6}  {c.detail}")
        if c.remedy and c.status in (FAIL, WARN):
            lines.append(f"  {'':{w}}  {'':6}  -> {c.remedy}")
    bad = sum(c.status == FAIL for c in checks)
    lines.append(f"{bad} check(s) failed" if bad else "all checks passed")
    return "\n".join(lines)


def doctor(ifname: str | None = None, groups: list[str] | None = None,
           as_json: bool = False) -> int:
    """Print the report; 0 when nothing failed, 1 otherwise."""
    checks = run_checks(ifname, groups)
    ok = not any(c.status == FAIL for c in checks)
    if as_json:
        print(json.dumps({"interface": ifname, "ok": ok,
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render(checks, ifname))
    return 0 if ok else 1
