"""DDP on CPU (gloo, 2 processes under torchrun): gradients equal a single-process step on the
union batch, evaluation scores are gathered without duplicates, and ``torchrun -m comem train``
writes the metrics file a single process writes, and resumes.

BatchNorm: torch's SyncBatchNorm runs on GPUs only, and with per-rank batch statistics the union
batch's gradient is a different function (each half normalised by its own mean), so the gradient
test runs BatchNorm on running statistics. What it checks is everything else: that every
gradient-carrying forward of both steps goes through DDP and the averaged gradient is the union's.
"""

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import ava_share, ava_step, ava_union_batch, gradients, make_detector, make_model, union_batch
from formatdata import write_charades
from tinydata import TINY_TRAIN_FLAGS, write_dataset

from comem.config import TrainConfig
from comem.engine.distributed import DistContext, DistributedSetupError, wrap_for_training
from comem.engine.modes import comem_step, joint_step
from comem.engine.trainer import EpochSampler, Trainer
from comem.errors import UserError
from comem.tasks.ava.data import load_ava
from comem.tasks.ava.synthetic import SyntheticAvaSpec, write_synthetic_ava
from comem.tasks.classification import ClassificationTask

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "COMEM_HOME": str(tmp_path / "home"),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ranks_share_an_epoch_order_exactly() -> None:
    whole = EpochSampler(5, seed=3, epoch=1).order
    shares = [EpochSampler(5, seed=3, epoch=1, context=DistContext(rank, 2)).order for rank in (0, 1)]
    assert shares[0].tolist() == whole[0::2].tolist()
    assert shares[1].tolist() == [*whole[1::2].tolist(), whole[0].item()]  # wrapped: equal lengths
    resumed = EpochSampler(5, seed=3, epoch=1, skip=2, context=DistContext(1, 2)).order
    assert resumed.tolist() == shares[1][2:].tolist()


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each rank of tests/ddp_worker.py computed (one torchrun for the tests that read it)."""
    out = tmp_path_factory.mktemp("ddp_worker")
    torchrun([str(TESTS / "ddp_worker.py"), str(out)], out)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


def test_ddp_step_gradients_equal_single_process_on_the_union_batch(ddp_ranks: list[dict]) -> None:
    ranks = ddp_ranks

    model = make_model()
    video, targets = union_batch()
    comem_step(model, video, targets, contextlib.nullcontext)
    want = {"comem": gradients(model)}
    model.zero_grad(set_to_none=True)
    joint_step(model, video, targets, contextlib.nullcontext)
    want["joint"] = gradients(model)

    for mode in ("comem", "joint"):
        assert len(want[mode]) > 20
        for rank in ranks:
            assert rank[mode].keys() == want[mode].keys()
            for name, gradient in want[mode].items():
                torch.testing.assert_close(rank[mode][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    # comem's 3 per-clip backwards all-reduce every gradient bucket once (no_sync on all clips but
    # the last); without no_sync they would do it once per clip, to the same gradients.
    for rank in ranks:
        once, every_clip = rank["comem_reductions"], rank["comem_every_clip_reductions"]
        assert once and sorted(once) == sorted(set(once))
        assert sorted(every_clip) == sorted(once * 3)
        for name, gradient in want["comem"].items():
            torch.testing.assert_close(rank["comem_every_clip"][name], gradient, rtol=1e-4, atol=1e-6)
    # The halves alone give other gradients: the match above is the all-reduce's doing.
    half = make_model()
    comem_step(half, video[:2], targets[:2], contextlib.nullcontext)
    assert not torch.allclose(gradients(half)["head.fc.weight"], want["comem"]["head.fc.weight"])

    for rank in ranks:
        gathered = rank["gathered"]
        assert gathered.indices == [0, 1, 2, 3, 4]
        assert gathered.items == [(0.0, 0), (1.0, 1), (2.0, 0), (3.0, 1), (4.0, 0)]
        assert gathered.skipped == ["bad0", "bad1"]


def test_ddp_ava_step_gradients_equal_single_process_on_the_union_batch(ddp_ranks: list[dict]) -> None:
    # The detector's joint step and its two-pass comem step (no-grad memory pass, then the keyframe
    # clip's gradient pass through DDP) on each rank's half equal one process on the union batch;
    # the comem step all-reduces every gradient bucket once.
    batch = ava_union_batch()
    for mode in ("joint", "comem"):
        detector = make_detector()
        ava_step(detector, detector, batch, mode)
        want = gradients(detector)
        assert len(want) > 20 and "roi_head.classifier.weight" in want
        assert not any(name.startswith("video_model.head.") for name in want)  # the frozen clip head
        for rank in ddp_ranks:
            assert rank[f"ava_{mode}"].keys() == want.keys()
            for name, gradient in want.items():
                torch.testing.assert_close(
                    rank[f"ava_{mode}"][name], gradient, rtol=1e-4, atol=1e-6, msg=name
                )
        once = ddp_ranks[0][f"ava_{mode}_reductions"]
        assert once and sorted(once) == sorted(set(once))
    half = make_detector()  # rank 0's half alone gives other gradients: the match is the all-reduce's
    ava_step(half, half, ava_share(batch, slice(0, 2)), "comem")
    assert not torch.allclose(
        gradients(half)["roi_head.classifier.weight"], want["roi_head.classifier.weight"]
    )


def video_scores(predictions_csv: Path) -> dict[str, dict[str, float]]:
    """``predictions.csv``'s scores: video -> class name -> score (every class when there are <= 5)."""
    rows = list(csv.DictReader(predictions_csv.open()))
    ranks = range(1, (len(rows[0]) - 2) // 2 + 1)
    return {row["video"]: {row[f"pred{k}"]: float(row[f"score{k}"]) for k in ranks} for row in rows}


def test_torchrun_multi_label_val_map_is_that_of_the_saved_checkpoint(tmp_path: Path) -> None:
    # Charades-format multi-label data: the per-video sigmoid scores of both ranks are gathered, and
    # the val mAP printed during DDP training is the one a sharded `comem eval` of the checkpoint
    # gives (the same model: rank 0's BatchNorm statistics, which the checkpoint stores; each rank's
    # last training forward updates its own). One process scores every video in the same batch
    # beside the same videos (ShardSampler deals out whole batches), so its per-video scores agree
    # to float rounding; its mAP may still differ by a rank where two videos' scores nearly tie.
    from comem.inference.evaluate import evaluate_checkpoint

    data = write_charades(tmp_path / "charades", num_train=8, num_val=6)
    out = tmp_path / "ddp"
    flags = [*TINY_TRAIN_FLAGS, "--data", str(data), "--batch-size", "2", "--epochs", "2", "--out", str(out)]
    torchrun(["-m", "comem", "train", *flags], tmp_path)
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["multi_label"] and trained["val_videos"] == 6
    sharded = tmp_path / "sharded"
    eval_flags = ["--checkpoint", str(out / "last.pt"), "--device", "cpu", "--workers", "0"]
    eval_flags += ["--out", str(sharded)]
    torchrun(["-m", "comem", "eval", *eval_flags], tmp_path)
    assert json.loads((sharded / "metrics.json").read_text())["val_mAP"] == trained["val_mAP"]
    evaluated, one = evaluate_checkpoint(out / "last.pt", device="cpu", workers=0, out=tmp_path / "one")
    assert evaluated["videos"] == 6
    expected, got = video_scores(one / "predictions.csv"), video_scores(sharded / "predictions.csv")
    assert expected.keys() == got.keys() and all(len(scores) == 3 for scores in got.values())
    for video, scores in expected.items():
        assert scores == pytest.approx(got[video], abs=2e-6), video


def test_torchrun_training_writes_the_single_process_metrics_and_resumes(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    flags = [*TINY_TRAIN_FLAGS, "--data", str(tiny_dataset), "--batch-size", "2", "--save-every", "0"]
    out = tmp_path / "ddp"
    done = torchrun(["-m", "comem", "train", *flags, "--epochs", "1", "--out", str(out)], tmp_path)
    assert done.stdout.count("epoch 1/1:") == 1  # rank 0 alone reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert len(list((out / "tb").iterdir())) == 1  # one event file: rank 0's

    single = TrainConfig(
        data=str(tiny_dataset), out=str(tmp_path / "single"), backbone="tiny", crop_size=32, clip_len=4,
        stride=2, clips=2, batch_size=2, workers=0, device="cpu", epochs=1, save_every=0,
    )  # fmt: skip
    expected = Trainer(single, ClassificationTask(single)).run()
    assert metrics.keys() == expected.keys()
    assert metrics["history"][0].keys() == expected["history"][0].keys()
    assert metrics["val_videos"] == 4 and metrics["epochs"] == 1
    # 4 val videos in 2 clean shares of 2: the gathered metrics are over all 4 (multiples of 25%)
    assert metrics["val_top1"] in (0.0, 25.0, 50.0, 75.0, 100.0)

    done = torchrun(
        ["-m", "comem", "train", *flags, "--epochs", "2", "--out", str(out), "--resume"], tmp_path
    )
    assert "resumed from" in done.stdout and done.stdout.count("epoch 2/2:") == 1
    resumed = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == metrics["history"][0]


AVA_FLAGS = [
    "--task", "ava", "--backbone", "tiny", "--crop-size", "32", "--clip-len", "4", "--stride", "4",
    "--clips", "2", "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def ava_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``torchrun -m comem train --task ava`` (comem mode) on a synthetic AVA set whose 3 val
    keyframes split unevenly over the 2 ranks (one is padded onto rank 1 and must count once)."""
    root = tmp_path_factory.mktemp("ava_run")
    spec = SyntheticAvaSpec(train_movies=2, val_movies=1, size=32, keyframes=3)
    data = write_synthetic_ava(root / "ava", spec)
    out = root / "run"
    done = torchrun(["-m", "comem", "train", *AVA_FLAGS, "--data", str(data), "--out", str(out)], root)
    return out, done


def test_torchrun_ava_training_val_map_is_that_of_the_saved_checkpoint(
    ava_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    from comem.inference.evaluate import evaluate_checkpoint

    out, done = ava_run
    assert done.stdout.count("epoch 1/1:") == 1  # rank 0 alone reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ava" and metrics["mode"] == "comem" and metrics["val_keyframes"] == 3
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    evaluated, _ = evaluate_checkpoint(out / "last.pt", device="cpu", workers=0, out=tmp_path)
    assert evaluated["val_frame_mAP"] == metrics["val_frame_mAP"]
    detections = (out / "detections_val.csv").read_text()
    assert detections == (tmp_path / "detections_val.csv").read_text()
    val = load_ava(out.parent / "ava").val.keyframes
    assert (
        len(detections.splitlines()) == sum(len(k.boxes) for k in val) * 3
    )  # every proposal once, 3 classes


def test_torchrun_eval_reports_what_one_process_reports(
    ava_run: tuple[Path, subprocess.CompletedProcess], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Classification on 5 val videos (rank 1's share is padded with video 0) and AVA, each sharded
    # over 2 processes: the same metrics, predictions.csv and detections as one process.
    from comem.inference.evaluate import evaluate_checkpoint

    data = write_dataset(tmp_path / "data", num_train=2, num_val=5)
    ava_checkpoint = ava_run[0] / "last.pt"
    worker = [str(TESTS / "ddp_eval_worker.py"), str(tmp_path / "ddp")]
    torchrun([*worker, str(tiny_checkpoint), str(data), str(ava_checkpoint)], tmp_path)
    single, _ = evaluate_checkpoint(
        tiny_checkpoint, data=data, device="cpu", workers=0, batch_size=2, out=tmp_path / "one" / "cls"
    )
    sharded = json.loads((tmp_path / "ddp" / "cls" / "metrics.json").read_text())
    assert single["videos"] == 5 and sharded == single
    for name in ("predictions.csv", "per_class.csv"):
        assert (tmp_path / "ddp" / "cls" / name).read_text() == (tmp_path / "one" / "cls" / name).read_text()
    single, _ = evaluate_checkpoint(ava_checkpoint, device="cpu", workers=0, out=tmp_path / "one" / "ava")
    sharded = json.loads((tmp_path / "ddp" / "ava" / "eval_val.json").read_text())
    assert sharded["val_frame_mAP"] == single["val_frame_mAP"]
    assert {k: v for k, v in sharded.items() if k != "detections"} == {
        k: v for k, v in single.items() if k != "detections"
    }
    detections = [tmp_path / run / "ava" / "detections_val.csv" for run in ("ddp", "one")]
    assert detections[0].read_text() == detections[1].read_text()


def test_sync_bn_on_cpu_processes_is_refused_in_one_line() -> None:
    model = make_model()
    with pytest.raises(DistributedSetupError, match="--sync-bn needs CUDA devices"):
        wrap_for_training(model, DistContext(rank=0, world_size=2), torch.device("cpu"), sync_bn=True)
    assert issubclass(DistributedSetupError, UserError)


def test_a_stopped_rank_makes_the_other_fail_in_one_line_within_the_timeout(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    # Two gloo processes started by hand (torchrun would end the job itself once one fails); rank 1 is
    # SIGSTOPped mid-run, as a hung GPU or a paused container would leave it.
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = [*TINY_TRAIN_FLAGS, "--data", str(tiny_dataset), "--batch-size", "2", "--epochs", "500"]
    argv = [sys.executable, "-m", "comem", "train", *flags, "--out", str(tmp_path / "run")]
    argv += ["--dist-timeout", "0.1", "--save-every", "0"]
    base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    base.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = [
        subprocess.Popen(
            argv,
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        # the command, the chunk plan, then epoch 1's summary
        lines = [ranks[0].stdout.readline() for _ in range(3)]
        assert lines[1].startswith("plan: ") and lines[2].startswith("epoch 1/500:"), lines
        ranks[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert ranks[0].returncode == 2 and len(errors) == 1, stderr[-3000:]
    assert errors[0].startswith(
        "comem train: error: rank 0 of 2: another process did not answer within --dist-timeout 0.1 min"
    )
    assert waited < 6 + 30  # the 6 s timeout, and at most one step and evaluation around it
    assert errors[0].split("comem train: error: ", 1)[1] in (tmp_path / "run" / "train.log").read_text()
