"""Every recipe in configs/ resolves, says where it comes from, and builds its model."""

from pathlib import Path

import pytest
import torch
import yaml

from comem.cli import main
from comem.config import load_config
from comem.models.build import ModelSpec, build_model

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_recipes_of_the_paper_settings_exist() -> None:
    names = {path.stem for path in RECIPES}
    assert {
        "kinetics400_r2plus1d_50", "kinetics400_slowfast_r50", "kinetics400_ir_csn_152",
        "kinetics700_r2plus1d_50", "charades_slowfast_r50", "ssv1_r2plus1d_50", "ssv2_r2plus1d_50",
        "ava22_slowfast_r50", "finetune_r2plus1d_18",
    } <= names  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_resolves_and_builds_its_model_on_the_meta_device(
    recipe: Path, capsys: pytest.CaptureFixture
) -> None:
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert "Source of the hyperparameters:" in " ".join(header)
    assert "Expected accuracy:" in " ".join(header)

    capsys.readouterr()
    assert main(["train", "--config", str(recipe), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = load_config(recipe)
    assert printed == {key: value for key, value in vars(config).items()}
    for key, value in yaml.safe_load(recipe.read_text()).items():
        assert printed[key.replace("-", "_")] == value, key

    spec = ModelSpec(
        backbone=config.backbone, num_classes=400, memory_stages=tuple(config.memory_stages),
        memory=config.memory, fusion=config.fusion, key_dim=config.key_dim, dropout=config.dropout,
    )  # fmt: skip
    with torch.device("meta"):
        model = build_model(spec)
    assert len(model.memory_stage_names) == len(config.memory_stages)
    assert all(parameter.is_meta for parameter in model.parameters())
    if config.data_format in ("ssv1", "ssv2"):
        assert config.flip in ("auto", "off", "swap-labels")  # never the left/right-swapping "on"
