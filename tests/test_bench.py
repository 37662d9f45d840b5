"""``comem bench train`` runs real steps of every mode and reports what they cost."""

import json
from pathlib import Path

import pytest
from formatdata import write_charades

from comem.cli import main

TINY = ["--backbone", "tiny", "--batch-size", "2", "--clip-len", "4", "--crop-size", "32"]
TINY += ["--steps", "1", "--warmup", "0", "--workers", "0", "--device", "cpu"]


def test_bench_train_reports_every_mode_and_the_comem_flop_overhead(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "train", *TINY, "--clips", "2,3", "--json", str(out), "--peak-tflops", "1"]) == 0
    report = json.loads(out.read_text())
    rows = {(row["mode"], row["clips"]): row for row in report["rows"]}
    assert list(rows) == [
        ("plain", 1),
        ("single", 1),
        *[(mode, clips) for clips in (2, 3) for mode in ("joint", "comem", "comem-cross")],
    ]
    for row in rows.values():
        assert row["error"] is None
        assert row["clips_per_s"] == pytest.approx(2 * row["clips"] / (row["step_ms"] / 1000))
        assert row["achieved_tflops"] == pytest.approx(row["step_tflop"] / (row["step_ms"] / 1000))
        assert row["mfu"] == pytest.approx(row["achieved_tflops"])  # peak given as 1 TFLOP/s
        assert row["peak_memory_gib"] is None  # CPU: no allocator statistics
    assert rows[("single", 1)]["speed_vs_single"] == 1.0
    # Same clips: joint and the plain two-pass comem do the same forward+backward; comem adds ONE
    # no-grad forward (about a third more), whatever the number of memory stages (3 here). The
    # cross-clip gradient adds a forward and an input-only backward of the stages after the first
    # memory (here layer2: layer3, layer4 and the head, the cheap end of the network).
    for clips in (2, 3):
        local = rows[("comem", clips)]["step_tflop"] / rows[("joint", clips)]["step_tflop"]
        cross = rows[("comem-cross", clips)]["step_tflop"] / rows[("joint", clips)]["step_tflop"]
        assert 1.25 < local < 1.45, local
        assert local < cross < local + 0.3, (local, cross)
    assert rows[("joint", 2)]["step_tflop"] == pytest.approx(2 * rows[("single", 1)]["step_tflop"], rel=0.01)
    table = capsys.readouterr().out
    assert "| comem | 3 |" in table and "tiny, 4×32², B=2" in table

    # Counting on the meta device (no computation) gives the FLOPs of the real steps.
    counted = tmp_path / "flops.json"
    assert main(["bench", "train", *TINY, "--clips", "2,3", "--flops-only", "--json", str(counted)]) == 0
    for row in json.loads(counted.read_text())["rows"]:
        real = rows[(row["mode"], row["clips"])]
        assert row["step_tflop"] == pytest.approx(real["step_tflop"], rel=1e-9)
        assert row["flop_bound_vs_single"] == pytest.approx(real["flop_bound_vs_single"], rel=1e-9)
        assert row["clips_per_s"] is None


def test_bench_train_on_a_multi_label_dataset(tmp_path: Path) -> None:
    # Charades-format data: multi-hot targets over its 3 classes (the model had 400 and crashed)
    data = write_charades(tmp_path / "charades", num_train=2, num_val=1)
    out = tmp_path / "bench.json"
    argv = ["bench", "train", *TINY, "--data", str(data), "--modes", "single,comem", "--clips", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["mode"], row["clips"], row["error"]) for row in rows] == [
        ("single", 1, None),
        ("comem", 2, None),
    ]
    assert all(row["clips_per_s"] > 0 for row in rows)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--modes", "single,fast"], "--modes must be"), (["--backbone", "r9"], "unknown backbone 'r9'")],
)
def test_bench_train_rejects_bad_options_in_one_line(flags: list[str], message: str, capsys) -> None:
    assert main(["bench", "train", *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("comem bench: error:") and message in err and "\n" not in err


def test_bench_train_on_real_videos_through_the_training_loader(tiny_dataset: Path, capsys) -> None:
    flags = ["--modes", "single,comem", "--clips", "2", "--data", str(tiny_dataset)]
    assert main(["bench", "train", *TINY, *flags]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert [(row["mode"], row["clips"]) for row in report["rows"]] == [("single", 1), ("comem", 2)]
    for row in report["rows"]:
        assert row["error"] is None and row["clips_per_s"] > 0 and row["loader_wait_ms"] >= 0
    assert f"{tiny_dataset} data" in out


def test_bench_train_profile_writes_a_chrome_trace_per_row_and_prints_the_top_operators(
    tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "profile"
    argv = ["bench", "train", *TINY, "--clips", "2", "--modes", "single,comem", "--profile", str(folder)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ("single_N1", "comem_N2"):
        trace = json.loads((folder / f"{name}.pt.trace.json").read_text())  # what Perfetto loads
        names = {event.get("name") for event in trace["traceEvents"]}
        assert "aten::convolution" in names or "aten::mkldnn_convolution" in names
    tables = dict(
        zip(
            ("single", "comem"), out.split("top operators by self time")[1].split("\ncomem N=2:"), strict=True
        )
    )

    def calls(table: str, operator: str) -> int:
        line = next(line for line in table.splitlines() if line.endswith(f"×  {operator}"))
        return int(line.split("×")[0].split()[-1])

    # per step, comem's gradient pass runs each of its 2 clips' backward through every convolution
    # once: twice single's backward convolutions (its memory pass has no backward)
    backward = "aten::convolution_backward"
    assert calls(tables["comem"], backward) == 2 * calls(tables["single"], backward) > 0
