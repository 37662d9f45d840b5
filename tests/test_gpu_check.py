"""``benchmarks/gpu_check.sh``: its wiring end to end on a CPU (``--cpu --quick``), and how it fits
the GPU benchmarks into a time budget, planned from the FLOP counts committed beside it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comem.diagnostics.bench_spec import DEFAULT_BENCH_MODES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def gpu_check(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "COMEM_HOME": str(tmp_path / "home")}
    command = ["bash", str(SCRIPT), *args]
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)


def test_cpu_quick_runs_every_command_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = gpu_check("--cpu", "--quick", "--out", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert done.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # printed as well
    outcomes = {}  # step -> outcome, from the summary's table of commands
    for line in summary.splitlines():
        if "| `comem " in line:
            cells = line.split(" | ")
            outcomes[cells[0].removeprefix("| ")] = cells[2]
    assert outcomes == dict.fromkeys(("doctor", "flops", "bench", "data", "train"), "ok")
    assert "| bench-compile |  | skipped: inductor" in summary
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["ok"] and [c["mode"] for c in doctor["checks"] if c["name"] == "fp32"] == ["comem"]
    bench = json.loads((out / "bench.json").read_text())
    rows = [(row["mode"], row["clips"]) for row in bench["rows"]]
    assert rows == load_gpu_check().BenchPlan(DEFAULT_BENCH_MODES, (2,), 1, 0, False).rows()
    assert ("plain", 1) in rows and ("comem", 2) in rows
    assert all(r["error"] is None and r["clips_per_s"] > 0 for r in bench["rows"])
    for row in bench["rows"]:  # the measured table is in the summary
        assert f"| {row['mode']} | {row['clips']} | {row['clips_per_s']:.1f} |" in summary
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    assert f"train loss {metrics['history'][-1]['train_loss']:.4f}" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--cpu"], "--cpu runs with --quick only"), (["--quick", "--out", "."], "is not empty")],
)
def test_gpu_check_refuses_what_cannot_work(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "something").write_text("x")
    done = gpu_check(*args, tmp_path=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


MODES = ("plain", "single", "joint", "comem")  # the modes the committed FLOP counts have


@pytest.fixture(scope="module")
def planner():
    module = load_gpu_check()
    # r2plus1d_18 at 16×112², B=16, N = 2, 4, 8, 16 (`comem bench train --flops-only`)
    flops = module.read_step_flops(ROOT / "benchmarks" / "flops_r2plus1d_18.json")
    options = {"clip_options": module.GPU_CLIP_OPTIONS, "step_options": module.STEP_OPTIONS, "modes": MODES}
    return module, flops, options


def test_the_plan_is_the_first_in_preference_order_that_fits(planner) -> None:
    module, flops, options = planner
    # preference: every clip count with 10, 5, 3 timed steps, then fewer clip counts
    plans = [
        module.BenchPlan(MODES, clips, steps, warmup, False)
        for clips in module.GPU_CLIP_OPTIONS
        for steps, warmup in module.STEP_OPTIONS
    ]
    estimates = [module.estimate_bench_s(plan, flops, module.GPU_TIMES) for plan in plans]
    assert estimates[0] == max(estimates) and estimates[-1] == min(estimates)
    assert [len(plan.rows()) for plan in plans[::3]] == [10, 6, 4]
    chosen = []
    for allowance in [*estimates, min(estimates) - 1]:
        result = module.choose_bench(flops, allowance, module.GPU_TIMES, compile=False, **options)
        fits = [estimate <= allowance for estimate in estimates]
        if not any(fits):
            assert result is None
            continue
        assert result == (plans[fits.index(True)], estimates[fits.index(True)])
        chosen.append(fits.index(True))
    assert chosen == sorted(chosen) and chosen[0] == 0  # less time, a smaller plan
    argv = plans[0].argv(["--backbone", "r2plus1d_18"], "cuda", Path("b.json"))
    assert argv[:4] == ["bench", "train", "--backbone", "r2plus1d_18"] and "--compile" not in argv
    assert argv[argv.index("--clips") + 1] == "2,4,8,16" and argv[argv.index("--steps") + 1] == "10"


def test_compiled_runs_leave_out_plain_and_count_compile_time(planner) -> None:
    module, flops, options = planner
    plan, estimate = module.choose_bench(flops, 10_000, module.GPU_TIMES, compile=True, **options)
    assert plan.modes == ("single", "joint", "comem") and plan.compile
    times = module.GPU_TIMES
    eager = module.estimate_bench_s(module.BenchPlan(plan.modes, plan.clips, 10, 3, False), flops, times)
    rows = len(plan.rows())
    assert estimate == pytest.approx(eager + times.compile_first_s + (rows - 1) * times.compile_row_s)
    assert "--compile" in plan.argv([], "cuda", Path("c.json"))
    # with little time, the compiled run keeps single and comem at one clip count
    smallest = module.BenchPlan(("single", "comem"), (4,), 3, 1, True)
    need = module.estimate_bench_s(smallest, flops, times)
    assert module.choose_bench(flops, need, times, compile=True, **options) == (smallest, need)
    assert module.choose_bench(flops, need - 1, times, compile=True, **options) is None
