"""The layering written in pyproject.toml ([tool.importlinter]) holds: cli -> engine -> tasks -> config
-> models, data -> memory, the engine never names a task, tasks are independent, and nothing in
comem imports in a cycle. The contracts are checked with import-linter on the source tree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comem.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(source: Path, config: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``comem`` package found under ``source``."""
    code = "import sys, importlinter.cli as c; sys.exit(c.lint_imports(sys.argv[1], no_cache=True))"
    env = {**os.environ, "PYTHONPATH": str(source)}
    return subprocess.run(
        [sys.executable, "-c", code, str(config)], env=env, capture_output=True, text=True, timeout=120
    )


def test_import_contracts_are_kept() -> None:
    done = lint_imports(ROOT / "src", ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_an_engine_import_of_a_task_breaks_the_contracts(tmp_path: Path) -> None:
    # The same contracts on a copy of the tree whose loop imports the AVA task and whose decoder
    # imports back from a reader: the layering, the engine's task-blindness and acyclicity all break.
    shutil.copytree(ROOT / "src" / "comem", tmp_path / "comem")
    trainer = tmp_path / "comem" / "engine" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\nfrom comem.tasks.ava.task import AvaTask  # noqa\n")
    source = tmp_path / "comem" / "data" / "source.py"
    source.write_text(source.read_text() + "\nfrom comem.data.decode import open_video  # noqa\n")
    model = tmp_path / "comem" / "models" / "heads.py"
    model.write_text(model.read_text() + "\nfrom comem.tasks import base  # noqa\n")
    done = lint_imports(tmp_path, ROOT / "pyproject.toml")
    assert done.returncode == 1
    assert "1 kept, 3 broken" in done.stdout, done.stdout[-3000:]  # the two tasks are still independent
    assert "comem.models is not allowed to import comem.tasks" in done.stdout
    assert "comem.engine.trainer -> comem.tasks.ava.task" in done.stdout
    assert "- .source -> .decode (1 import)" in done.stdout


def test_every_mode_name_trains_through_the_engine_step() -> None:
    import contextlib

    import torch

    from comem.config import MODES, TrainConfig
    from comem.engine.step import train_step
    from comem.models.build import ModelSpec, build_model

    model = build_model(ModelSpec(backbone="tiny", num_classes=3, dropout=0.0))
    video, targets = torch.randn(2, 2, 3, 4, 32, 32), torch.tensor([0, 2])
    for mode in MODES:
        model.zero_grad(set_to_none=True)
        output = train_step(model, video, targets, mode=mode, autocast=contextlib.nullcontext)
        assert output.loss > 0 and model.head.fc.weight.grad is not None, mode
    with pytest.raises(ConfigError, match="mode must be one of single, tsn, joint, comem; got 'x'"):
        TrainConfig(mode="x").validate()


def test_the_command_lists_its_options_without_importing_torch() -> None:
    # In a fresh interpreter: `import comem` and building every subcommand's parser (all that
    # `comem --help` and `comem train -h` do) leave torch, torchvision and scikit-learn unimported.
    code = (
        "import sys, comem, comem.cli as cli; parser = cli.build_parser(); "
        "assert 'train' in parser.format_help(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    heavy = subprocess.run(
        [sys.executable, "-c", code.replace("comem.cli as cli", "comem.cli as cli, comem.engine.step")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "'torch'" in heavy.stdout  # the check sees torch when something imports it


def test_one_table_steps_every_mode_name() -> None:
    # the names --mode takes (torch-free, comem.config) are the keys of the engine's one dispatch table
    from comem.config import MODES
    from comem.engine.modes import MODE_STEPS, TWO_PASS_MODES

    assert tuple(MODE_STEPS) == MODES
    assert set(TWO_PASS_MODES) <= set(MODES)
