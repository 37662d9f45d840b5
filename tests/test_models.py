"""torchvision weights load behind identity-initialised memories (training steps: test_backbones.py)."""

from pathlib import Path

import pytest
import torch
from tinydata import randomise_norms
from torchvision.models import video as tv_video

from comem.models.build import ModelSpec, PretrainedLoadError, build_model, load_pretrained

NUM_CLASSES = 3
MEMORY_STAGES = ("layer3", "layer4")


def randomised_torchvision_r2plus1d() -> torch.nn.Module:
    """torchvision R(2+1)D-18 with non-default BatchNorm parameters and statistics, so that a
    load which skipped them would show."""
    torch.manual_seed(1)
    model = tv_video.r2plus1d_18(weights=None)
    randomise_norms(model)
    return model.eval()


@pytest.mark.parametrize("wrapper", [None, "model_state"])
def test_torchvision_weights_load_and_memory_starts_as_identity(tmp_path: Path, wrapper: str | None) -> None:
    reference = randomised_torchvision_r2plus1d()
    path = tmp_path / "r2plus1d_18.pth"
    state = reference.state_dict()
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 45}, path)

    torch.manual_seed(2)  # different random init than the reference
    model = build_model(
        ModelSpec(backbone="r2plus1d_18", num_classes=NUM_CLASSES, memory_stages=MEMORY_STAGES)
    )
    assert load_pretrained(model, path) == []
    model.eval()

    captured = {}
    model.head.register_forward_hook(lambda module, inputs, output: captured.update(head_input=inputs[0]))
    reference.layer4.register_forward_hook(lambda module, inputs, output: captured.update(layer4=output))
    video = torch.randn(1, 2, 3, 4, 32, 32)
    with torch.no_grad():
        model(video)
        reference(video.flatten(0, 1))
    assert captured["head_input"].shape == captured["layer4"].shape == (2, 512, 1, 2, 2)
    torch.testing.assert_close(captured["head_input"], captured["layer4"], rtol=1e-5, atol=1e-5)


def test_wrong_architecture_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r3d_18.pth"
    torch.save(tv_video.r3d_18(weights=None).state_dict(), path)
    model = build_model(
        ModelSpec(backbone="r2plus1d_18", num_classes=NUM_CLASSES, memory_stages=MEMORY_STAGES)
    )
    with pytest.raises(PretrainedLoadError, match="r3d_18.pth: does not fit backbone") as error:
        load_pretrained(model, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_partial_state_dict_is_rejected_when_strict(tmp_path: Path) -> None:
    path = tmp_path / "stem_only.pth"
    state = tv_video.r2plus1d_18(weights=None).state_dict()
    torch.save({key: value for key, value in state.items() if key.startswith("stem.")}, path)
    model = build_model(
        ModelSpec(backbone="r2plus1d_18", num_classes=NUM_CLASSES, memory_stages=MEMORY_STAGES)
    )
    with pytest.raises(
        PretrainedLoadError,
        match=r"stem_only.pth: does not match the backbone r2plus1d_18 as a torchvision checkpoint \(\d+ mis",
    ):
        load_pretrained(model, path)
    missing = load_pretrained(model, path, strict=False)
    assert missing and all(key.startswith("backbone.stages.layer") for key in missing)


def test_memory_summary_reaches_every_memory_and_old_checkpoints_keep_the_mean() -> None:
    import dataclasses

    from comem.checkpoint_state import spec_from_state
    from comem.models.build import ModelSpec, build_model

    spec = ModelSpec(backbone="tiny", num_classes=3, summary="max")
    assert {memory.summary for memory in build_model(spec).memories.values()} == {"max"}
    stored = dataclasses.asdict(spec)
    assert spec_from_state({"model_spec": stored}).summary == "max"
    del stored["summary"]  # a checkpoint written before the option: trained with average pooling
    assert spec_from_state({"model_spec": stored}).summary == "mean"


def test_entry_hidden_reaches_every_memory_and_old_checkpoints_keep_linear_projections() -> None:
    import dataclasses

    from comem.checkpoint_state import checkpoint_config, spec_from_state
    from comem.models.build import ModelSpec, build_model

    spec = ModelSpec(backbone="tiny", num_classes=3, entry_hidden=24)
    model = build_model(spec)
    assert {memory.entry[0].out_features for memory in model.memories.values()} == {24}
    stored = dataclasses.asdict(spec)
    assert spec_from_state({"model_spec": stored}).entry_hidden == 24
    del stored["entry_hidden"]  # written before the option: linear q/k/v
    old = spec_from_state({"model_spec": stored})
    assert old.entry_hidden is None
    assert all(isinstance(m.entry, torch.nn.Identity) for m in build_model(old).memories.values())
    assert checkpoint_config({"epochs": 3})["entry_hidden"] is None
