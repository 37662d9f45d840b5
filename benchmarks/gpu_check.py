"""The GPU check behind ``benchmarks/gpu_check.sh`` (run that; it sets up the environment).

Within one time budget (default 8 minutes) it runs, each as the ``comem`` command RESULTS.md names:

1. ``comem doctor``: every code path on the GPU;
2. ``comem bench train --flops-only``: the FLOPs per step, from which the time of each benchmark
   row is estimated;
3. ``comem bench train``: r2plus1d_18, 16×112², B=16, every mode at N = 2, 4, 8, 16;
4. ``comem train --epochs 1`` on the built-in data;
5. ``comem bench train --compile``: the same rows with the backbone stages compiled.

Before each benchmark it picks the largest configuration whose estimated time fits what is left
(fewer clip counts, then fewer timed steps); a command still running when the budget is spent is
stopped, and the rows it finished are kept (``--json`` is rewritten after every row). Every JSON
and log goes under ``--out``, with ``summary.md`` (printed at the end).

``--quick`` runs the same commands at toy sizes (tiny backbone, 4×32², B=2, N=2, one step);
``--cpu --quick`` is the test of this wiring on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GPU_SHAPE = ["--backbone", "r2plus1d_18", "--batch-size", "16", "--clip-len", "16", "--crop-size", "112"]
GPU_CLIP_OPTIONS = ((2, 4, 8, 16), (4, 16), (4,))  # the first that fits the budget
QUICK_SHAPE = ["--backbone", "tiny", "--batch-size", "2", "--clip-len", "4", "--crop-size", "32"]
QUICK_SHAPE += ["--workers", "0"]
QUICK_CLIP_OPTIONS = ((2,),)
STEP_OPTIONS = ((10, 3), (5, 2), (3, 1))  # (timed steps, warm-up steps), the first that fits
QUICK_STEP_OPTIONS = ((1, 0),)
RESERVE_S = 15.0  # kept for the summary and for stopping a command that overran


@dataclass(frozen=True)
class TimeModel:
    """Seconds each part is expected to take; what the plan is made from.

    From the first GPU run (an H200, torch 2.11, 2026-11-29; benchmarks/RESULTS.md): bf16
    single ran r2plus1d_18 (16×112², B=16) at 93 TFLOP/s, joint at 113-131, comem at 63-69; the
    plain float32 loop at 46. The doctor took 102 s, the FLOP count beside it 102 s, one epoch of
    ``comem train`` with data generation 35 s. Compile times are still guesses: the compiled
    bench has not run to its end on a GPU.
    """

    tflops: float = 80.0  # bf16 rows (single, joint, comem)
    plain_tflops: float = 45.0  # the float32 ``plain`` row
    process_s: float = 20.0  # python start, import torch, CUDA context
    row_s: float = 6.0  # per row: model build, loader workers, cuDNN autotuning of new shapes
    flop_count_steps: float = 3.0  # the step under FlopCounterMode, in step times
    compile_first_s: float = 60.0  # inductor, forward and backward of the first compiled row
    compile_row_s: float = 15.0  # each later compiled row (new shapes)
    doctor_s: float = 110.0
    flops_s: float = 105.0  # on the CPU, beside the doctor
    data_s: float = 0.0  # a separate data-generation command (--quick only)
    train_s: float = 40.0  # built-in data generated (once per machine) + one epoch + evaluation


GPU_TIMES = TimeModel()
CPU_QUICK_TIMES = TimeModel(
    tflops=0.03,  # the CPU tables of RESULTS.md: 0.02-0.05 TFLOP/s
    plain_tflops=0.03,
    process_s=10.0,
    row_s=1.0,
    flop_count_steps=2.0,
    compile_first_s=300.0,  # inductor on a CPU: minutes (not run)
    compile_row_s=300.0,
    doctor_s=30.0,
    flops_s=10.0,
    data_s=10.0,
    train_s=15.0,
)


@dataclass(frozen=True)
class BenchPlan:
    """One ``comem bench train`` command."""

    modes: tuple[str, ...]
    clips: tuple[int, ...]
    steps: int
    warmup: int
    compile: bool

    def rows(self) -> list[tuple[str, int]]:
        """(mode, N) in the order the bench measures them."""
        from comem.diagnostics.bench_spec import MULTI_CLIP_MODES

        rows = [(mode, 1) for mode in self.modes if mode in ("plain", "single")]
        return rows + [(mode, n) for n in self.clips for mode in self.modes if mode in MULTI_CLIP_MODES]

    def argv(self, shape: list[str], device: str, json_path: Path) -> list[str]:
        return [
            "bench",
            "train",
            *shape,
            "--clips",
            ",".join(map(str, self.clips)),
            "--modes",
            ",".join(self.modes),
            "--steps",
            str(self.steps),
            "--warmup",
            str(self.warmup),
            *(["--compile"] if self.compile else []),
            "--device",
            device,
            "--json",
            str(json_path),
        ]


def estimate_bench_s(plan: BenchPlan, step_tflop: dict[tuple[str, int], float], times: TimeModel) -> float:
    """Expected seconds of ``plan``: per row, its setup, the FLOP-counting step, warm-up and timed
    steps at the model's TFLOP/s, and the compile time."""
    total = times.process_s
    for index, (mode, clips) in enumerate(plan.rows()):
        rate = times.plain_tflops if mode == "plain" else times.tflops
        step_s = step_tflop[(mode, clips)] / rate
        total += times.row_s + (times.flop_count_steps + plan.warmup + plan.steps) * step_s
        if plan.compile:
            total += times.compile_first_s if index == 0 else times.compile_row_s
    return total


def choose_bench(
    step_tflop: dict[tuple[str, int], float],
    allowance_s: float,
    times: TimeModel,
    *,
    compile: bool,
    clip_options: tuple[tuple[int, ...], ...],
    step_options: tuple[tuple[int, int], ...],
    modes: tuple[str, ...] | None = None,
) -> tuple[BenchPlan, float] | None:
    """The largest plan of ``modes`` (default: the bench's) expected to fit ``allowance_s``: every
    clip count before more timed steps; compiled runs leave out ``plain`` (it is the uncompiled
    reference) and, last, every mode but ``single`` and ``comem``."""
    from comem.diagnostics.bench_spec import DEFAULT_BENCH_MODES

    modes = modes or DEFAULT_BENCH_MODES
    mode_options = [modes]
    if compile:
        mode_options = [tuple(mode for mode in modes if mode != "plain"), ("single", "comem")]
    for modes in mode_options:
        for clips in clip_options:
            for steps, warmup in step_options:
                plan = BenchPlan(modes, clips, steps, warmup, compile)
                estimate = estimate_bench_s(plan, step_tflop, times)
                if estimate <= allowance_s:
                    return plan, estimate
    return None


@dataclass
class Phase:
    """One command of the check and what became of it."""

    name: str
    argv: list[str]  # after ``python -m comem``
    estimate_s: float
    status: str = "not run"
    seconds: float = 0.0
    began: float = 0.0

    @property
    def command(self) -> str:
        return "comem " + " ".join(self.argv)


@dataclass
class Check:
    out: Path
    budget_s: float
    device: str
    quick: bool
    dry_run: bool
    started: float = field(default_factory=time.monotonic)
    simulated_s: float = 0.0  # a dry run's estimates of the commands it did not run
    phases: list[Phase] = field(default_factory=list)

    @property
    def times(self) -> TimeModel:
        return CPU_QUICK_TIMES if self.device == "cpu" else GPU_TIMES

    @property
    def shape(self) -> list[str]:
        return QUICK_SHAPE if self.quick else GPU_SHAPE

    @property
    def clip_options(self) -> tuple[tuple[int, ...], ...]:
        return QUICK_CLIP_OPTIONS if self.quick else GPU_CLIP_OPTIONS

    @property
    def step_options(self) -> tuple[tuple[int, int], ...]:
        return QUICK_STEP_OPTIONS if self.quick else STEP_OPTIONS

    def left(self) -> float:
        """Seconds left for commands; a dry run counts the estimates of the commands it would run."""
        spent = self.simulated_s if self.dry_run else time.monotonic() - self.started
        return self.budget_s - spent - RESERVE_S

    def launch(self, phase: Phase, *, even_dry: bool = False) -> subprocess.Popen | None:
        """Start ``phase`` (log in ``OUT/<name>.log``) unless its estimate exceeds what is left or
        this is a dry run (and not ``even_dry``); ``None`` when it was not started."""
        self.phases.append(phase)
        left = self.left()
        if phase.estimate_s > left:
            phase.status = f"skipped: needs ~{phase.estimate_s:.0f} s, {max(left, 0):.0f} s left"
            print(f"[{phase.name}] {phase.status}", flush=True)
            return None
        estimate = f"estimate {phase.estimate_s:.0f} s, {left:.0f} s left"
        print(f"[{phase.name}] {phase.command}  ({estimate})", flush=True)
        if self.dry_run and not even_dry:
            phase.status = "dry run"
            self.simulated_s += phase.estimate_s
            return None
        phase.began = time.monotonic()
        with open(self.out / f"{phase.name}.log", "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "comem", *phase.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its loader workers are stopped with it
            )

    def wait(self, phase: Phase, process: subprocess.Popen | None) -> bool:
        """Wait for a launched ``phase`` until the budget is spent, then stop it; whether it ran."""
        if process is None:
            return False
        try:
            code = process.wait(timeout=None if self.dry_run else max(self.left() + RESERVE_S / 2, 1.0))
            phase.status = "ok" if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            stop(process)
            phase.status = "stopped: budget spent"
        phase.seconds = time.monotonic() - phase.began
        print(f"[{phase.name}] {phase.status} after {phase.seconds:.0f} s", flush=True)
        return True

    def run(self, phase: Phase) -> bool:
        return self.wait(phase, self.launch(phase))

    def bench(
        self, name: str, step_tflop: dict[tuple[str, int], float], allowance_s: float, compile: bool
    ) -> None:
        """The largest ``comem bench train`` expected to fit ``allowance_s``, run as ``name``."""
        options = {"clip_options": self.clip_options, "step_options": self.step_options}
        chosen = choose_bench(step_tflop, allowance_s, self.times, compile=compile, **options)
        if chosen is None and allowance_s < self.left():  # a benchmark comes before the training run
            allowance_s = self.left()
            chosen = choose_bench(step_tflop, allowance_s, self.times, compile=compile, **options)
        if chosen is None:
            smallest = BenchPlan(("single", "comem"), self.clip_options[-1], *self.step_options[-1], compile)
            need = estimate_bench_s(smallest, step_tflop, self.times)
            status = f"skipped: needs ~{need:.0f} s, {max(allowance_s, 0):.0f} s left"
            self.phases.append(Phase(name, [], need, status=status))
            print(f"[{name}] {status}", flush=True)
            return
        plan, estimate = chosen
        self.run(Phase(name, plan.argv(self.shape, self.device, self.out / f"{name}.json"), estimate))


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, SIGKILL if it is still there 10 s later."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def read_step_flops(path: Path) -> dict[tuple[str, int], float]:
    rows = json.loads(path.read_text())["rows"]
    return {(row["mode"], row["clips"]): row["step_tflop"] for row in rows}


def run_check(check: Check) -> None:
    out, device, times = check.out, check.device, check.times
    doctor = ["doctor", "--device", device, "--json", str(out / "doctor.json")]
    if check.quick:
        doctor += ["--modes", "comem"] + (["--skip", "compile"] if device == "cpu" else [])
    clips = ",".join(map(str, check.clip_options[0]))
    flops = ["bench", "train", *check.shape, "--clips", clips, "--flops-only"]
    flops_phase = Phase("flops", [*flops, "--json", str(out / "flops.json")], times.flops_s)
    # Counted on the CPU (meta device) beside the doctor; the plan needs it, so a dry run counts too.
    counting = check.launch(flops_phase, even_dry=True)
    ran = check.run(Phase("doctor", doctor, times.doctor_s))
    check.wait(flops_phase, counting)
    if ran and not (out / "doctor.json").exists():
        print(f"comem doctor did not run (see {out / 'doctor.log'}); stopping", flush=True)
        return
    if not (out / "flops.json").exists():
        print("no FLOP counts, so no benchmark can be planned; stopping", flush=True)
        return
    step_tflop = read_step_flops(out / "flops.json")
    check.bench("bench", step_tflop, check.left() - times.data_s - times.train_s, compile=False)
    train = ["train", "--epochs", "1", "--out", str(out / "train"), "--device", device]
    if check.quick:
        data = out / "data"
        make = ["make-synthetic", str(data), "--num-train", "4", "--num-val", "2", "--size", "32"]
        check.run(Phase("data", [*make, "--frames", "16"], times.data_s))
        train += ["--data", str(data), "--backbone", "tiny", "--clips", "2", "--clip-len", "4"]
        train += ["--crop-size", "32", "--batch-size", "2", "--workers", "0"]
    else:
        train += ["--workers", "8"]
    check.run(Phase("train", train, times.train_s))
    if device == "cpu":
        reason = "skipped: inductor compiles for minutes on a CPU (comem doctor traces compile there)"
        check.phases.append(Phase("bench-compile", [], 0.0, status=reason))
        return
    check.bench("bench-compile", step_tflop, check.left(), compile=True)


def summary(check: Check) -> str:
    """The Markdown summary: every command with its outcome, then the doctor's verdict, the
    benchmark tables and the training result."""
    from comem.diagnostics.bench import BenchReport, BenchRow, compare_to_single, describe, format_table
    from comem.diagnostics.bench_spec import BenchSpec

    out = check.out
    used = time.monotonic() - check.started
    lines = [
        f"# comem GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Budget {check.budget_s:.0f} s, used {used:.0f} s; device `{check.device}`"
        f"{' (--quick sizes)' if check.quick else ''}; files in `{out}`.",
        "",
        "| step | command | outcome | seconds (estimate) |",
        "|---|---|---|---|",
    ]
    for phase in check.phases:
        command = f"`{phase.command}`" if phase.argv else ""
        lines.append(
            f"| {phase.name} | {command} | {phase.status} | {phase.seconds:.0f} ({phase.estimate_s:.0f}) |"
        )
    doctor = out / "doctor.json"
    if doctor.exists():
        report = json.loads(doctor.read_text())
        counts = report["counts"]
        device = next((d for d in report["devices"] if d["device"] == report["device"]), {})
        versions = report["versions"]
        lines += [
            "",
            "## comem doctor",
            "",
            f"{device.get('name', report['device'])}; torch {versions['torch']}, CUDA {versions['cuda']}, "
            f"cuDNN {versions['cudnn']}, NCCL {versions['nccl']}, PyAV {versions['av']}.",
            f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP.",
        ]
        lines += [
            f"- {c['status']} {c['name']} {c['mode'] or ''}: {c['detail']}"
            for c in report["checks"]
            if c["status"] != "PASS"
        ]
    for name, title in (("bench", "comem bench train"), ("bench-compile", "comem bench train --compile")):
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        rows = [BenchRow(**row) for row in data["rows"]]
        compare_to_single(rows)  # a run stopped part-way wrote its rows without these columns
        bench = BenchReport(spec=BenchSpec(**data["spec"]), environment=data["environment"], rows=rows)
        lines += ["", f"## {title}", "", describe(bench), "", format_table(bench)]
    metrics = out / "train" / "metrics.json"
    if metrics.exists():
        result = json.loads(metrics.read_text())
        last = result["history"][-1]
        seconds = next((p.seconds for p in check.phases if p.name == "train"), 0.0)
        lines += [
            "",
            "## comem train",
            "",
            f"{result['epochs']} epoch on {result['data']} ({result['train_videos']} train / "
            f"{result['val_videos']} val videos), mode {result['mode']}, backbone {result['backbone']}: "
            f"train loss {last['train_loss']:.4f}, val top-1 {result.get('val_top1', float('nan')):.1f}%, "
            f"{seconds:.0f} s for the command (data generation included when it was not cached).",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="time for everything [480]")
    parser.add_argument("--out", help="output folder, must be new or empty [runs/gpu_check-DATE]")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --quick only)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the wiring in about a minute")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (counts FLOPs only)")
    args = parser.parse_args(argv)
    if args.cpu and not args.quick:
        parser.error("--cpu runs with --quick only: the GPU configurations take hours on a CPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/gpu_check-{stamp}").resolve()
    if out.exists() and any(out.iterdir()):
        print(f"gpu_check: error: {out} is not empty; choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.budget_s, "cpu" if args.cpu else "cuda", args.quick, args.dry_run)
    run_check(check)
    text = summary(check)
    (out / "summary.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
