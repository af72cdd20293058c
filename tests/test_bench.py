"""`xdprx bench --quick` (the CI smoke run of the benchmark suite): it
completes and writes a well-formed report. No timing is asserted: speed is
the report's business, not the tests'."""
import json
import subprocess
import sys

EXPECTED = {"A xdp_drop", "A c_spin", "A c_poll", "A xdprx", "A xdprx_poll", "A xdprx_recv",
            "A kernel/1", "A c_poll@200k", "A xdprx_poll@200k", "A xdprx_poll_rx0@200k",
            "A kernel/16", "A xdprx/1", "A xdprx/16", "B c_poll", "B xdprx"}
LOSSFREE = {f"B {who}/{n}" for who in ("kernel", "xdprx", "xdprx-proc") for n in (1, 16)}


def test_bench_quick_writes_a_well_formed_report(pair, tmp_path):
    # `pair` only checks root and nsenter; the suite makes its own veth pair
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "xdprx.service.cli", "bench", "--quick", "--seconds", "1",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["quick"] and rep["reps"] == 1 and rep["ns"] == [1, 16]
    assert set(rep["machine"]["placements"]) == {"A", "B"} and rep["machine"]["kernel"]
    assert set(rep["summary"]) == EXPECTED
    for name, s in rep["summary"].items():
        assert s["runs"] == 1 and s["min"] <= s["median"] <= s["max"], name
        assert s["median"] > 0, f"{name} measured nothing"
        assert len(rep["runs"][name]) == 1
    for name in EXPECTED - {"A xdp_drop"}:
        assert rep["summary"][name]["cpu_ns_median"] > 0, name
    # placement B: every contender found a loss-free rate and measured latency
    assert set(rep["lossfree"]) == LOSSFREE
    for name, b in rep["lossfree"].items():
        assert b["runs"] == 1 and b["deliveries_per_s_median"] > 0, name
        assert 0 < b["latency_p50_us"] <= b["latency_p99_us"] <= b["latency_p99.9_us"], name
        assert b["latency_batches"] > 0 and 0 <= b["latency_loss_max"] <= 1, name
        for probe in rep["lossfree_runs"][name]["searches"][0]["probes"]:
            assert probe["sent"] > 0 and 0 <= probe["deliveries"] <= probe["sent"] * b["n"]
    # separate processes on a shared core, and the call costs
    pf = rep["procfan"]
    assert set(pf["median_deliveries_per_s"]) == {"kernel", "xdprx shared", "xdprx daemon-core"}
    assert all(v > 0 for v in pf["median_deliveries_per_s"].values())
    assert set(rep["calls"]) == {"Receiver.recv(timeout=0)", "Receiver.pump(timeout=0)",
                                 "Consumer.recv(timeout=0)", "Subscriber.recv(timeout=0)",
                                 "Subscriber first recv(timeout=0), fresh process"}
    assert all(0 < c["us_median"] < 1000 for c in rep["calls"].values())
    mq = rep["queues"]                # multi-queue: 1 vs 2 queues, xdprx and C, and in memory
    assert set(mq["pps_median"]) == {"c/1", "c/2", "xdprx/1", "xdprx/2"}
    for k, runs in mq["runs"].items():
        n = int(k.split("/")[1])
        for r in runs:
            assert r["packets"] > 0 and len(r["per_queue"]) == n and all(r["per_queue"]), (k, r)
    assert mq["in_memory"]["pps_median"]["2"] > 0 and "## Multi-queue" in \
        (out / "report.md").read_text()
    wf = rep["wakefloor"]             # the floor under (e): bare C processes woken per batch
    assert set(wf["variants"]) == {"prod0/eventfd", "prod0/futex", "prod1/eventfd", "prod1/futex"}
    for k, runs in wf["runs"].items():
        n = int(k.rsplit("/", 1)[1])
        for r in runs:
            assert r["sent"] > 0 and r["batches"] >= n and r["lagged"] == 0, (k, r)
            assert 0 < r["p50"] <= r["p99"], (k, r)
    assert "## The floor under (e)" in (out / "report.md").read_text()
    for t in rep["targets"]:
        assert t["met"] in (True, False, None) and t["target"]
        assert (t["value"] is None) == (t["met"] is None)
    md = (out / "report.md").read_text()
    assert "| contender |" in md and "## Targets" in md and rep["command"] in md
    for png in rep["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"![{png}]({png})" in md
    assert set(rep["plots"]) == {"deliveries_vs_n.png", "latency_vs_n.png", "cpu_per_packet.png"}
