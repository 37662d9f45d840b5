"""``comem doctor`` on a CPU: the CPU paths pass, the CUDA ones are skipped with their reason, and
the machinery only a GPU runs in full (fp16 with a GradScaler) is checked here on the CPU."""

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from comem.cli import main
from comem.config import MODES
from comem.diagnostics.doctor import check_step, make_workspace, run_checks, start_report
from comem.diagnostics.step_paths import mode_step, step_paths, where_nonfinite
from comem.models.build import build_model

SRC = Path(__file__).resolve().parents[1] / "src"
CPU = torch.device("cpu")


def comem_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "comem", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_doctor_on_a_cpu_passes_every_cpu_path_and_says_why_it_skips_the_others(tmp_path: Path) -> None:
    done = comem_command("doctor", "--device", "cpu", "--json", str(tmp_path / "doctor.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["ok"] and report["device"] == "cpu"
    for key in ("comem", "torch", "torchvision", "av", "cuda", "cudnn", "nccl"):
        assert key in report["versions"]
    assert report["versions"]["torch"] == torch.__version__
    status = {(c["name"], c["mode"]): (c["status"], c["detail"]) for c in report["checks"]}
    assert status[("videos", None)][0] == "PASS"
    assert status[("loader", None)][0] == "PASS"
    for mode in MODES:
        for name in ("fp32", "ddp", "train-loop"):
            assert status[(name, mode)][0] == "PASS", (name, mode, status[(name, mode)])
        assert "gloo" in status[("ddp", mode)][1] and "vs fp32" in status[("ddp", mode)][1]
        for name in ("bf16", "fp16+scaler", "channels-last-3d"):
            assert status[(name, mode)][0] == "SKIP" and "CUDA" in status[(name, mode)][1]
    # compile is traced (aot_eager) in comem mode; the others say why not
    assert status[("compile", "comem")][0] == "PASS" and "aot_eager" in status[("compile", "comem")][1]
    assert all(status[("compile", m)][0] == "SKIP" for m in MODES if m != "comem")
    assert report["counts"]["FAIL"] == 0
    # the console shows the same: one line per check and the verdict
    lines = done.stdout.splitlines()
    assert sum(line.startswith(("PASS", "SKIP", "FAIL")) for line in lines) == len(report["checks"])
    assert "0 FAIL" in lines[-1] and "comem works here" in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_doctor_asked_for_cuda_without_a_gpu_says_so_in_one_line(capsys) -> None:
    assert main(["doctor", "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("comem doctor: error:") and "no CUDA device" in err and "\n" not in err


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    return make_workspace(tmp_path_factory.mktemp("doctor"), CPU)


@pytest.mark.parametrize("mode", MODES)
def test_scaled_backward_gives_the_scaled_gradients_of_the_same_step(space, mode: str) -> None:
    # What fp16+scaler relies on: every backward of the step (comem's per-clip ones and its
    # cross-clip gradient too) runs on the scaled loss (a power of 2: exact).
    batch = space.train_batch(mode)
    video, targets = batch["video"].float() / 255, batch["label"]
    gradients = []
    for scale in (None, torch.tensor(8.0)):
        torch.manual_seed(0)
        model = build_model(space.model_spec())
        loss = mode_step(mode, model, model, video, targets, contextlib.nullcontext, scale)
        gradients.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(loss)
    assert len(gradients[0]) == len(gradients[1]) > 10
    for plain, scaled in zip(*gradients, strict=True):
        torch.testing.assert_close(scaled, 8.0 * plain, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_fp16_with_a_grad_scaler_runs_on_the_cpu_and_matches_fp32(space, mode: str) -> None:
    # On a GPU this is the fp16+scaler check; the CPU runs fp16 autocast too, so its GradScaler
    # wiring (scale, unscale, step, update) is tested here against the fp32 step.
    paths = {path.name: path for path in step_paths(CPU)}
    assert check_step(paths["fp32"], mode, space)[0] == "PASS"
    status, detail = check_step(replace(paths["fp16+scaler"], cuda_only=None), mode, space)
    assert status == "PASS", detail
    differences = dict(part.split(" ") for part in detail.split("vs fp32: ")[1].split(", "))
    assert 0 < float(differences["gradient"]) < 0.05  # fp16 rounding: close, not equal
    assert float(differences["loss"]) < 0.01


@pytest.mark.parametrize("mode", MODES)
def test_bf16_runs_on_the_cpu_and_stays_within_its_tolerance_of_fp32(space, mode: str) -> None:
    # bf16 rounds the same way on a CPU as on a GPU (an H200 gave these very differences), so
    # the bf16 check's tolerance is tested here: rounding passes it, and it is not trivially loose.
    paths = {path.name: path for path in step_paths(CPU)}
    assert check_step(paths["fp32"], mode, space)[0] == "PASS"
    bf16 = replace(paths["bf16"], cuda_only=None)
    status, detail = check_step(bf16, mode, space)
    assert status == "PASS", detail
    differences = dict(part.split(" ") for part in detail.split("vs fp32: ")[1].split(", "))
    assert 0.01 < float(differences["gradient"]) < bf16.tolerance / 1.5
    assert float(differences["loss"]) < 0.01 and float(differences["scores"]) < 0.05


def test_a_non_finite_step_names_the_layer_it_came_from() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    loss = model(torch.ones(1, 4)).sum()
    loss.backward()
    model[1].weight.grad[0, 0] = float("inf")
    torch.optim.AdamW(model.parameters()).step()
    where = where_nonfinite(model, loss)
    assert "non-finite gradients in 1 parameters (first 1.weight)" in where
    assert "non-finite weights in 1 (first 1.weight)" in where and where.startswith("loss ")


def test_a_check_that_raises_is_a_fail_line_and_the_report_fails(tmp_path: Path) -> None:
    report = start_report("cpu")
    run_checks(report, modes_to_check=("comem", "no-such-mode"), skip=("compile", "train-loop"))
    by_mode = {(c.name, c.mode): c for c in report.checks}
    assert by_mode[("fp32", "comem")].status == "PASS"
    failed = by_mode[("fp32", "no-such-mode")]
    assert failed.status == "FAIL" and "no-such-mode" in failed.detail and "\n" not in failed.detail
    assert by_mode[("compile", "comem")].status == "SKIP" and by_mode[("compile", "comem")].detail == (
        "skipped on request"
    )
    assert not report.ok and report.counts()["FAIL"] >= 1
