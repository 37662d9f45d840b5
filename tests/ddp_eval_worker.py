"""Run by tests/test_distributed.py under torchrun (2 CPU processes, gloo): ``comem eval``'s
``evaluate_checkpoint`` of a classification and an AVA checkpoint, sharded over the ranks.
Usage: ``torchrun --nproc_per_node 2 tests/ddp_eval_worker.py OUT CLS_CKPT CLS_DATA AVA_CKPT``."""

import sys
from pathlib import Path

import torch

from comem.engine.distributed import shutdown_distributed
from comem.inference.evaluate import evaluate_checkpoint


def main(out: Path, classification: str, data: str, ava: str) -> None:
    torch.set_num_threads(1)
    evaluate_checkpoint(classification, data=data, device="cpu", workers=0, batch_size=2, out=out / "cls")
    evaluate_checkpoint(ava, device="cpu", workers=0, batch_size=2, out=out / "ava")
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
