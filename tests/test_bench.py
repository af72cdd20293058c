"""`xdprx bench --quick` (the CI smoke run of the benchmark suite): it
completes and writes a well-formed report. No timing is asserted: speed is
the report's business, not the tests'."""
import json
import subprocess
import sys

EXPECTED = {"xdp_drop", "c_spin", "c_poll", "xdprx", "kernel/1", "kernel/16", "xdprx/1",
            "xdprx/16"}


def test_bench_quick_writes_a_well_formed_report(pair, tmp_path):
    # `pair` only checks root and nsenter; the suite makes its own veth pair
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "xdprx.cli", "bench", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["quick"] and rep["reps"] == 1 and rep["ns"] == [1, 16]
    assert rep["machine"]["placement"] == "A" and rep["machine"]["kernel"]
    assert set(rep["summary"]) == EXPECTED
    for name, s in rep["summary"].items():
        assert s["runs"] == 1 and s["min"] <= s["median"] <= s["max"], name
        assert s["median"] > 0, f"{name} measured nothing"
        assert len(rep["runs"][name]) == 1
    for name in EXPECTED - {"xdp_drop"}:
        assert rep["summary"][name]["cpu_ns_median"] > 0, name
    for t in rep["targets"]:
        assert t["met"] in (True, False, None) and t["target"]
        assert (t["value"] is None) == (t["met"] is None)
    assert rep["not_measured"]
    md = (out / "report.md").read_text()
    assert "| contender |" in md and "## Targets" in md and rep["command"] in md
    for png in rep["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"![{png}]({png})" in md
    assert set(rep["plots"]) == {"deliveries_vs_n.png", "cpu_per_packet.png"}
