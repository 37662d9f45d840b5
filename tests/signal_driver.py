"""Run by tests/test_signals.py in a subprocess of its own (signal handlers are per process).

Trains a tiny run straight, then ``trials`` times the same run with SIGINT, SIGTERM or SIGUSR1 sent at
a random moment of it, resumes each stopped run with ``--resume`` and compares it with the straight
one. Prints one JSON document: a record per trial.
"""

import contextlib
import io
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch

import comem.engine.trainer
import comem.tasks.classification  # the CLI imports it in the first run: not in the straight run's time
from comem.cli import main

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def same_state(path_a: Path, path_b: Path) -> bool:
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    tensors_equal = all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    moments = [
        torch.equal(x[key], y[key])
        for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True)
        for key in y
    ]
    return (
        tensors_equal
        and all(moments)
        and a["scheduler"] == b["scheduler"]
        and (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    )


def run(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


def trial_records(data: str, root: Path, flags: list[str], trials: int, seed: int) -> list[dict]:
    # an untimed first run: what a process does once (imports, caches) would make the timed run
    # longer than the trials and put random stop moments past their end
    assert run(["train", "--data", data, "--out", str(root / "warm-up"), *flags])[0] == 0
    started = time.perf_counter()
    assert run(["train", "--data", data, "--out", str(root / "straight"), *flags])[0] == 0
    duration = time.perf_counter() - started
    straight = json.loads((root / "straight" / "metrics.json").read_text())["history"]
    chooser = random.Random(seed)
    records = []
    for index in range(trials):
        out = root / f"trial{index}"
        signum, delay = chooser.choice(STOP_SIGNALS), chooser.uniform(0.0, duration)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
        timer.start()
        code, stdout = run(["train", "--data", data, "--out", str(out), *flags])
        timer.cancel()
        timer.join()
        stopped = code == 128 + signum
        lines = [line for line in stdout.splitlines() if line.startswith(signal.Signals(signum).name + ":")]
        saved_step = torch.load(out / "last.pt", weights_only=True)["global_step"] if stopped else None
        resumed = run(["train", "--data", data, "--out", str(out), *flags, "--resume"])[0] if stopped else 0
        history = json.loads((out / "metrics.json").read_text())["history"]
        records.append(
            {
                "signal": signal.Signals(signum).name,
                "delay": round(delay, 3),
                "code": code,
                "stopped": stopped,
                "stop_lines": len(lines),
                "saved_step": saved_step,
                "resume_code": resumed,
                "history_equal": history == straight,
                "state_equal": same_state(out / "last.pt", root / "straight" / "last.pt"),
            }
        )
    return records


if __name__ == "__main__":
    data_dir, root_dir, count, seed_text, *train_flags = sys.argv[1:]
    for stop_signal in STOP_SIGNALS:  # a signal landing after a run ended must not end this driver
        signal.signal(stop_signal, signal.SIG_IGN)
    torch.set_num_threads(1)
    comem.engine.trainer.plot_training_curves = lambda *args: None  # slow, and not what is compared here
    result = trial_records(data_dir, Path(root_dir), train_flags, int(count), int(seed_text))
    print("RESULT " + json.dumps(result))
