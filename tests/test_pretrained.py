"""Pretrained weights in torchvision, PySlowFast, PyTorchVideo and VMZ naming load into comem's backbones.

The PySlowFast / PyTorchVideo / VMZ files are made by renaming a comem model's own state dict with the
hand-written tables below (written from those projects' module names, independently of the
renaming rules in ``comem.models.pretrained``), so a load that dropped, swapped or misplaced any
tensor would show.
"""

import re
from pathlib import Path

import pytest
import torch
from tinydata import randomise_norms
from torchvision.models import video as tv_video

from comem.cli import build_parser
from comem.engine.checkpoint import save_checkpoint
from comem.engine.trainer import rng_state
from comem.models.build import ModelSpec, PretrainedLoadError, VideoModel, build_model, load_pretrained
from comem.tasks.ava.model import AvaDetector


def test_torchvision_r2plus1d_predicts_as_torchvision_behind_identity_memories(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = tv_video.r2plus1d_18(weights=None)
    randomise_norms(reference)
    reference.eval()
    path = tmp_path / "r2plus1d_18.pth"
    torch.save(reference.state_dict(), path)

    torch.manual_seed(2)
    model = build_model(ModelSpec(backbone="r2plus1d_18", num_classes=400))  # memories after every stage
    assert model.memory_stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert load_pretrained(model, path) == []
    model.eval()
    video = torch.randn(1, 3, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model(video)[0]
        theirs = reference(video[0])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        banks = model.memory_bank(video)
        torch.testing.assert_close(
            model.forward_clip(video[:, 2], 2, banks)[0], theirs[2], rtol=1e-4, atol=1e-5
        )

    # Another class count: the backbone loads, the classifier keeps its fresh initialisation.
    other = build_model(ModelSpec(backbone="r2plus1d_18", num_classes=7))
    head = {key: value.clone() for key, value in other.head.state_dict().items()}
    assert load_pretrained(other, path) == []
    assert all(torch.equal(value, head[key]) for key, value in other.head.state_dict().items())
    stem = "backbone.stages.stem.0.weight"
    assert torch.equal(other.state_dict()[stem], model.state_dict()[stem])


def _rename(state: dict[str, torch.Tensor], table: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        if key.startswith("memories.") or key.endswith("num_batches_tracked"):
            continue
        for pattern, replacement in table:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


# comem name -> PyTorchVideo name (pytorchvideo/models/{resnet,x3d,slowfast}.py module attributes)
PTV_RESNET = [(r"^backbone\.stages\.stem\.", "blocks.0."), (r"^head\.fc\.", "blocks.5.proj.")] + [
    (rf"^backbone\.stages\.res{k}\.", f"blocks.{k - 1}.") for k in range(2, 6)
]
PTV_X3D = [
    (r"^backbone\.stages\.stem\.conv_xy\.", "blocks.0.conv.conv_t."),
    (r"^backbone\.stages\.stem\.conv_t\.", "blocks.0.conv.conv_xy."),
    (r"^backbone\.stages\.conv5\.conv\.", "blocks.5.pool.pre_conv."),
    (r"^backbone\.stages\.conv5\.norm\.", "blocks.5.pool.pre_norm."),
    (r"^head\.hidden\.", "blocks.5.pool.post_conv."),
    (r"\.branch2\.norm_b\.", ".branch2.norm_b.0."),
    (r"\.branch2\.se\.fc1\.", ".branch2.norm_b.1.block.1."),
    (r"\.branch2\.se\.fc2\.", ".branch2.norm_b.1.block.3."),
    *PTV_RESNET,
]
PTV_SLOWFAST = [
    (r"\.pathways\.(\d)\.", r".multipathway_blocks.\1."),
    (r"\.fusion\.conv\.", ".multipathway_fusion.conv_fast_to_slow."),
    (r"\.fusion\.norm\.", ".multipathway_fusion.norm."),
    (r"^head\.fc\.", "blocks.6.proj."),
    *PTV_RESNET,
]
# comem name -> PySlowFast name (slowfast/models/{video_model_builder,resnet_helper,stem_helper}.py)
PYSLOWFAST_BLOCK = [
    (r"\.branch1_conv\.", ".branch1."),
    (r"\.branch1_norm\.", ".branch1_bn."),
    (r"\.conv_([abc])\.", r".\1."),
    (r"\.norm_([abc])\.", r".\1_bn."),
    (r"^head\.fc\.", "head.projection."),
]
PYSLOWFAST_SLOWFAST = [
    (r"^backbone\.stages\.stem\.pathways\.(\d)\.norm\.", r"s1.pathway\1_stem.bn."),
    (r"^backbone\.stages\.stem\.pathways\.(\d)\.", r"s1.pathway\1_stem."),
    (r"^backbone\.stages\.stem\.fusion\.conv\.", "s1_fuse.conv_f2s."),
    (r"^backbone\.stages\.stem\.fusion\.norm\.", "s1_fuse.bn."),
    (r"^backbone\.stages\.res(\d)\.fusion\.conv\.", r"s\1_fuse.conv_f2s."),
    (r"^backbone\.stages\.res(\d)\.fusion\.norm\.", r"s\1_fuse.bn."),
    (r"^backbone\.stages\.res(\d)\.pathways\.(\d)\.res_blocks\.(\d+)\.", r"s\1.pathway\2_res\3."),
    *PYSLOWFAST_BLOCK,
]
PYSLOWFAST_X3D = [
    (r"^backbone\.stages\.stem\.conv_xy\.", "s1.pathway0_stem.conv_xy."),
    (r"^backbone\.stages\.stem\.conv_t\.", "s1.pathway0_stem.conv."),
    (r"^backbone\.stages\.stem\.norm\.", "s1.pathway0_stem.bn."),
    (r"^backbone\.stages\.conv5\.conv\.", "head.conv_5."),
    (r"^backbone\.stages\.conv5\.norm\.", "head.conv_5_bn."),
    (r"^head\.hidden\.", "head.lin_5."),
    (r"^backbone\.stages\.res(\d)\.res_blocks\.(\d+)\.", r"s\1.pathway0_res\2."),
    *PYSLOWFAST_BLOCK,
]

# comem name -> VMZ's PyTorch CSN name (torchvision VideoResNet: stem, layerN, conv1..3, downsample)
VMZ_CSN = [
    (r"^backbone\.stages\.stem\.conv\.", "stem.0."),
    (r"^backbone\.stages\.stem\.norm\.", "stem.1."),
    (r"^backbone\.stages\.res(\d)\.res_blocks\.", lambda m: f"layer{int(m[1]) - 1}."),
    (r"\.branch1_conv\.", ".downsample.0."),
    (r"\.branch1_norm\.", ".downsample.1."),
    (r"\.branch2\.conv_a\.", ".conv1.0."),
    (r"\.branch2\.norm_a\.", ".conv1.1."),
    (r"\.branch2\.conv_b\.pointwise\.", ".conv2.0.0."),
    (r"\.branch2\.conv_b\.norm\.", ".conv2.0.1."),
    (r"\.branch2\.conv_b\.depthwise\.", ".conv2.0.2."),
    (r"\.branch2\.conv_b\.", ".conv2.0."),
    (r"\.branch2\.norm_b\.", ".conv2.1."),
    (r"\.branch2\.conv_c\.", ".conv3.0."),
    (r"\.branch2\.norm_c\.", ".conv3.1."),
    (r"^head\.fc\.", "fc."),
]

CASES = [  # backbone, table, wrapper key, whether the linear X3D projection is stored as a 1x1x1 conv
    ("r2plus1d_50", PTV_RESNET, "model_state"),
    ("ir_csn_101", PTV_RESNET, None),
    ("x3d_m", PTV_X3D, "model_state"),
    ("slowfast_r50", PTV_SLOWFAST, "model_state"),
    ("slowfast_r50", PYSLOWFAST_SLOWFAST, "model_state"),
    ("x3d_s", PYSLOWFAST_X3D, "model_state"),
    ("ir_csn_152", VMZ_CSN, None),
    ("ip_csn_152", VMZ_CSN, "state_dict"),
]


def foreign_checkpoint(model: VideoModel, table: list, path: Path, wrapper: str | None) -> dict:
    state = _rename(model.state_dict(), table)
    for key in ("blocks.5.pool.post_conv.weight", "head.lin_5.weight"):  # a 1x1x1 conv there
        if key in state:
            state[key] = state[key][:, :, None, None, None]
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 196}, path)
    return state


@pytest.mark.parametrize(
    ("name", "table", "wrapper"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_pyslowfast_pytorchvideo_and_vmz_checkpoints_load_every_tensor(
    tmp_path: Path, name: str, table: list, wrapper: str | None
) -> None:
    torch.manual_seed(1)
    source = build_model(ModelSpec(backbone=name, num_classes=400, memory_stages=("last",)))
    randomise_norms(source)
    path = tmp_path / f"{name}.pyth"
    state = foreign_checkpoint(source, table, path, wrapper)
    assert not any(key.startswith(("backbone.", "head.fc.", "head.hidden.")) for key in state)  # renamed

    torch.manual_seed(2)
    model = build_model(ModelSpec(backbone=name, num_classes=400, memory_stages=("last",)))
    assert load_pretrained(model, path) == []
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("memories.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key
    if name == "slowfast_r50":  # and the two pathways compute what they computed in the source
        video = torch.randn(1, 2, 3, 8, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(video), source.eval()(video), rtol=1e-4, atol=1e-5)


def test_mismatched_keys_are_named_and_fail_unless_not_strict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model(ModelSpec(backbone="x3d_s", num_classes=400, memory_stages=("last",)))
    path = tmp_path / "x3d_s.pyth"
    state = foreign_checkpoint(source, PTV_X3D, path, None)
    del state["blocks.3.res_blocks.1.branch2.conv_a.weight"]
    state["blocks.3.res_blocks.1.branch2.extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    model = build_model(ModelSpec(backbone="x3d_s", num_classes=400, memory_stages=("last",)))
    with pytest.raises(PretrainedLoadError) as error:
        load_pretrained(model, path)
    message = str(error.value)
    assert message.startswith(f"{path}: does not match the backbone x3d_s as a PyTorchVideo checkpoint")
    assert "1 missing keys [backbone.stages.res4.res_blocks.1.branch2.conv_a.weight]" in message
    assert "1 unexpected [blocks.3.res_blocks.1.branch2.extra.weight]" in message and "\n" not in message
    missing = load_pretrained(model, path, strict=False)
    assert missing == ["backbone.stages.res4.res_blocks.1.branch2.conv_a.weight"]
    assert torch.equal(
        model.state_dict()["backbone.stages.res5.res_blocks.0.branch2.conv_a.weight"],
        source.state_dict()["backbone.stages.res5.res_blocks.0.branch2.conv_a.weight"],
    )


def test_wrong_architecture_is_a_shape_error(tmp_path: Path) -> None:
    source = build_model(ModelSpec(backbone="ir_csn_101", num_classes=400, memory_stages=("last",)))
    path = tmp_path / "csn_r101.pyth"
    foreign_checkpoint(source, PTV_RESNET, path, "model_state")
    model = build_model(ModelSpec(backbone="r2plus1d_50", num_classes=400, memory_stages=("last",)))
    with pytest.raises(
        PretrainedLoadError, match=r"csn_r101.pyth: does not fit backbone r2plus1d_50: blocks\.0"
    ):
        load_pretrained(model, path)


def test_strictness_is_a_train_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "--pretrained-strict", "false"]).pretrained_strict is False
    assert parser.parse_args(["train", "--pretrained-strict", "true"]).pretrained_strict is True


@pytest.mark.parametrize("name", ["s3d", "swin3d_t", "mvit_v2_s"])
def test_torchvision_transformer_and_s3d_weights_load_and_features_match(tmp_path: Path, name: str) -> None:
    torch.manual_seed(1)
    reference = getattr(tv_video, name)(weights=None).eval()
    randomise_norms(reference)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    model = build_model(ModelSpec(backbone=name, num_classes=400, memory_stages=("last-1", "last")))
    assert load_pretrained(model, path) == []
    model.eval()
    if name == "s3d":  # its pooling head needs a 224² clip; the tensors themselves are compared
        loaded = model.state_dict()
        for key, mine in model.backbone.torchvision_keys.items():
            # (the 1x1x1-conv classifier arrives as our linear one)
            assert torch.equal(loaded[mine].flatten(), reference.state_dict()[key].flatten()), key
        return
    video = torch.randn(1, 2, 3, 4, 64, 64)
    with torch.no_grad():
        if name == "swin3d_t":  # same head: same predictions behind identity memories
            torch.testing.assert_close(model(video)[0], reference(video[0]), rtol=1e-4, atol=1e-4)
            return
        captured = {}
        reference.norm.register_forward_hook(lambda module, inputs, output: captured.update(tokens=output))
        reference.pos_encoding.temporal_size, reference.pos_encoding.spatial_size = 2, (16, 16)
        reference(video[0])
        patches = captured["tokens"][:, 1:]  # MViT's final tokens without the class token
        ours = model.features(video)
        torch.testing.assert_close(ours.flatten(2).transpose(1, 2), patches, rtol=1e-4, atol=1e-4)


def test_comem_checkpoints_load_with_their_memories(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model(ModelSpec(backbone="tiny", num_classes=5))
    with torch.no_grad():
        source.memories["layer4"].out.weight.normal_()  # a trained memory, not the identity
    path = tmp_path / "last.pt"
    state = {f"module.{key}": value for key, value in source.state_dict().items()}  # saved under DDP
    torch.save({"model": state, "epoch": 3}, path)
    model = build_model(ModelSpec(backbone="tiny", num_classes=5))
    assert load_pretrained(model, path) == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_an_ava_detector_checkpoint_loads_its_video_model(tmp_path: Path) -> None:
    # As `comem train --task ava` writes it: detector weights under video_model./roi_head., RNG state.
    torch.manual_seed(2)
    detector = AvaDetector(build_model(ModelSpec(backbone="tiny", num_classes=1)), 3)
    with torch.no_grad():
        detector.video_model.memories["layer4"].out.weight.normal_()
    save_checkpoint({"model": detector.state_dict(), "rng": rng_state()}, tmp_path / "last.pt")
    model = build_model(ModelSpec(backbone="tiny", num_classes=5))
    assert load_pretrained(model, tmp_path / "last.pt") == []
    for key, value in detector.video_model.state_dict().items():
        if not key.startswith("head.fc."):  # one class there, five here: re-initialised
            assert torch.equal(model.state_dict()[key], value), key
