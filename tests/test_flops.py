"""FLOPs in torchvision's convention match every published figure; memories cost well under 1%."""

import json
import re

import pytest

from comem.cli import main
from comem.config import TrainConfig
from comem.models import backbones
from comem.models.backbones import BACKBONES
from comem.models.build import ModelSpec
from comem.models.flops import count_flops

DEFAULT_MEMORY = tuple(TrainConfig().memory_stages)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_flops_and_params_match_the_published_figures(name: str) -> None:
    entry = BACKBONES[name]
    published = entry.published
    frames, size = (published.frames, published.size) if published else (entry.frames, entry.size)
    spec = ModelSpec(backbone=name, num_classes=400, memory_stages=DEFAULT_MEMORY)
    report = count_flops(spec, frames, size, num_clips=3, norm_flops=published.norm_flops if published else 0)
    assert report.memory_gflops > 0
    assert report.memory_percent < 1.0  # "negligible overhead": the memories act on pooled vectors
    if published is not None:
        assert report.backbone_gflops == pytest.approx(published.gflops, rel=0.02)
        assert report.params_m == pytest.approx(published.params_m, rel=0.02)


# PyTorchVideo's zoo also lists X3D at its 256²/182² test crops, counted by fvcore on a train-mode
# model (5 FLOPs per normalised element): the same network reproduces those figures too.
@pytest.mark.parametrize(
    ("name", "frames", "size", "gflops"), [("x3d_s", 13, 182, 2.96), ("x3d_m", 16, 256, 6.72)]
)
def test_x3d_matches_pytorchvideo_zoo_in_its_convention(
    name: str, frames: int, size: int, gflops: float
) -> None:
    spec = ModelSpec(backbone=name, num_classes=400, memory_stages=())
    report = count_flops(spec, frames, size, norm_flops=5)
    assert report.backbone_gflops == pytest.approx(gflops, rel=0.02)
    assert report.backbone_gflops - report.norm_gflops < 0.95 * gflops  # the norm term is needed


def test_flops_command_prints_the_three_lines_and_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["flops", "--backbone", "r2plus1d_18", "--memory-stages", "layer3,layer4"]) == 0
    out = capsys.readouterr().out
    assert "input shape: (1, 3, 3, 16, 112, 112)" in out
    backbone = float(re.search(r"^backbone GFLOPs: ([\d.]+)$", out, re.M).group(1))
    memory = float(re.search(r"^memory GFLOPs: ([\d.e-]+)$", out, re.M).group(1))
    percent = float(re.search(r"^memory/backbone: ([\d.e-]+)%$", out, re.M).group(1))
    assert backbone == pytest.approx(40.519, abs=0.001)  # torchvision's R2Plus1D_18 _ops
    assert 0 < memory and percent == pytest.approx(100 * memory / backbone, rel=0.01)

    assert (
        main(["flops", "--backbone", "x3d_s", "--json", "--clips", "2", "--size", "64", "--frames", "4"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [1, 2, 3, 4, 64, 64]
    assert report["memory_stages"] == ["stem", "res2", "res3", "res4", "res5", "conv5"]  # default: all


def test_models_command_lists_backbones(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two entries keep it quick; every entry's count is checked above.
    monkeypatch.setattr(backbones, "BACKBONES", {name: BACKBONES[name] for name in ("tiny", "r3d_18")})
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["backbone"] for row in rows] == ["tiny", "r3d_18"]
    assert rows[1]["gflops"] == pytest.approx(40.697, abs=0.001) and rows[1]["input"] == [16, 112, 112]
    assert rows[1]["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:4] == ["r3d_18", "33.37", "16x112²", "40.70"]


def test_flops_command_rejects_unknown_names(capsys: pytest.CaptureFixture) -> None:
    assert main(["flops", "--backbone", "resnet9000"]) == 2
    assert capsys.readouterr().err.startswith("comem flops: error: unknown backbone 'resnet9000'")
    assert main(["flops", "--backbone", "x3d_m", "--memory-stages", "res9"]) == 2
    assert "unknown memory stage(s) res9; x3d_m's stages are stem, res2" in capsys.readouterr().err
    assert main(["flops", "--backbone", "tiny", "--memory-stages", "all,bogus"]) == 2
    message = "memory stages all, bogus: 'all' already names every stage; give it alone"
    assert message in capsys.readouterr().err
