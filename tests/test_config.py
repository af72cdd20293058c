"""`xdprx run --config FILE.toml`: merging with the command line, validation, a real run."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xdprx.service import cli, config
from xdprx.errors import ConfigError
from xdprx.testing import DaemonProcess, payloads, send_cmd

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "xdprx.toml"


def write(tmp_path, text):
    p = tmp_path / "xdprx.toml"
    p.write_text(text)
    return str(p)


def test_file_values_become_defaults_and_the_cli_wins(tmp_path):
    f = write(tmp_path, """
iface = "eth7"
group = ["239.1.2.3:5000", "[ff15::1]:6000"]
queue = 2
max-frames = 16384
frames = 8192
mode = "skb"
json = true
interval = 2          # an integer where a float is expected is fine
numa = 0              # NODE may be written as a number
allow-uid = [1000, "alice"]
duration = 1.5
""")
    a = cli.parse_args(["run", "--config", f])
    assert (a.iface, a.queue, a.frames, a.max_frames, a.mode, a.json) == \
        ("eth7", 2, 8192, 16384, "skb", True)
    assert a.group == ["239.1.2.3:5000", "[ff15::1]:6000"]
    assert a.interval == 2.0 and isinstance(a.interval, float) and a.duration == 1.5
    assert a.numa == "0" and a.allow_uid == ["1000", "alice"]
    assert a.hugepages == "auto" and a.batch == 256, "untouched options keep their defaults"
    # the command line overrides, and a list given there replaces the file's
    a = cli.parse_args(["run", "eth9", "--config", f, "--frames", "1024", "--mode", "native",
                        "--group", "239.9.9.9:9"])
    assert (a.iface, a.frames, a.mode, a.queue) == ("eth9", 1024, "native", 2)
    assert a.group == ["239.9.9.9:9"]
    # without --config nothing leaks from an earlier parse
    a = cli.parse_args(["run", "eth0", "--group", "239.1.1.1:1"])
    assert (a.frames, a.mode, a.group) == (4096, "auto", ["239.1.1.1:1"])


def test_underscores_dashes_and_interface_alias(tmp_path):
    f = write(tmp_path, 'interface = "eth1"\nmax_frames = 8192\nallow_gid = ["adm"]\n')
    a = cli.parse_args(["run", "--config", f])
    assert (a.iface, a.max_frames, a.allow_gid) == ("eth1", 8192, ["adm"])


@pytest.mark.parametrize("text,words", [
    ('frams = 4096\n', ["unknown key 'frams'", "known keys:", "max-frames"]),
    ('config = "x.toml"\n', ["unknown key 'config'"]),
    ('frames = "4096"\n', ["frames = '4096'", "expected an integer"]),
    ('frames = 4096.0\n', ["frames = 4096.0", "expected an integer"]),
    ('frames = true\n', ["frames = True", "expected"]),
    ('json = 1\n', ["json = 1", "true or false"]),
    ('mode = "fast"\n', ["mode = 'fast'", "one of auto, native, skb"]),
    ('group = [5000]\n', ["group = [5000]", "expected a string"]),
    ('queue = [1]\n', ["queue = [1]", "expected an integer"]),
    ('control = 7\n', ["control = 7", "expected a string"]),
    ('[run]\nframes = 1\n', ["unknown key 'run'"]),
    ('max-frames = 1\nmax_frames = 2\n', ["'max_frames' is given twice"]),
    ('frames = \n', ["not valid TOML", "line 1"]),
])
def test_bad_files_one_line_naming_the_key(tmp_path, capsys, text, words):
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        cli.parse_args(["run", "eth0", "--config", f])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"config {f}: ")
    for w in words:
        assert w in msg, msg
    # through main: one line, exit 2, no doctor hint for bad input
    assert cli.main(["run", "eth0", "--config", f]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"xdprx: error: {msg}"


def test_missing_file_and_missing_interface(tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No such file" in err and "nope.toml" in err
    f = write(tmp_path, 'group = ["239.1.2.3:5000"]\n')
    assert cli.main(["run", "--config", f]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xdprx: error: no interface given") and len(err.splitlines()) == 1


def test_example_config_is_valid():
    a = cli.parse_args(["run", "eth0", "--config", str(EXAMPLE)])
    vals = config.defaults(str(EXAMPLE), cli.build_parser().run_parser)
    assert vals["group"] and a.group == vals["group"]
    # every option of `run` is in the example (commented out or set)
    text = EXAMPLE.read_text()
    for dest in config.options(cli.build_parser().run_parser):
        if dest != "iface":
            assert dest.replace("_", "-") + " =" in text, dest


def test_run_from_config_file_with_a_subscriber(pair, tmp_path):
    g1, g2, n = "239.1.2.3:5000", "239.1.2.4:5001", 2000
    ctl = str(tmp_path / "x.sock")
    f = write(tmp_path, f"""
group = ["{g1}", "{g2}"]
mode = "skb"
frames = 1024
max-frames = 2048
hugepages = "off"
interval = 30                             # overridden by DaemonProcess's --interval 0.5
control = "{tmp_path}/not-this.sock"      # overridden by --control
""")
    with DaemonProcess(pair, ctl, [], "--config", f) as d:
        sub = subprocess.Popen([sys.executable, "-m", "xdprx.testing", "consume", "--control", ctl,
                                "--group", g1, "--count", str(n), "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert sub.stdout.readline().strip() == "ready", sub.stderr.read()
            assert pair.run("tx", send_cmd(g1, n, seed=5, rate=20000)).returncode == 0
            out, err = sub.communicate(timeout=60)
        finally:
            if sub.poll() is None:
                sub.kill()
        r = json.loads(out)[0]["groups"][g1]
        assert r["received"] == n and r["gaps"] == 0, (r, err)
        assert r["sha256"] == hashlib.sha256(b"".join(payloads(5, n))).hexdigest()
        st = json.loads(subprocess.run([sys.executable, "-m", "xdprx.service.cli", "stats", "--control",
                                        ctl, "--json"], capture_output=True, text=True,
                                       timeout=30).stdout)
        assert st["mode"] == "skb"
        assert (st["frames"]["ring"], st["frames"]["cap"]) == (1024, 2048)
        assert st["frames"]["pages"].startswith("4 KiB")
        assert not os.path.exists(tmp_path / "not-this.sock")
    assert d.proc.returncode == 0, d.err
    assert d.out.count("\n") >= 2 and "rx " in d.out, "stat lines every 0.5 s, not 30"
