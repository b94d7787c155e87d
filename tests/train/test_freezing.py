import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, DynUNet, FlexibleUNet, SegResNet, SwinUNETR, UNet
from pydantic import ValidationError
from torch import nn

from medft.errors import MedftError
from medft.train.freezing import (
    GROUP_NAMES,
    FreezeSchedule,
    FreezeStage,
    TrainableCount,
    apply_freezing,
    frozen_parameter_names,
    is_bias,
    method_frozen_names,
    parameter_groups,
    set_train_mode,
)


def _unet(out_channels: int) -> UNet:
    return UNet(3, 1, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")


# name: (network for N output channels, the encoder's parameter-name prefixes)
FAMILIES = {
    "unet3d": (_unet, ("model.0.", "model.1.submodule.0.", "model.1.submodule.1.submodule.")),
    "unet2d": (
        lambda n: UNet(2, 1, n, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1, norm="batch"),
        ("model.0.", "model.1.submodule.0.", "model.1.submodule.1.submodule.0.", "model.1.submodule.1.submodule.1.submodule."),
    ),
    "segresnet": (
        lambda n: SegResNet(3, 4, 1, n, blocks_down=(1, 1), blocks_up=(1,), norm=("group", {"num_groups": 2})),
        ("convInit.", "down_layers."),
    ),
    "dynunet": (
        lambda n: DynUNet(
            3, 1, n, kernel_size=(3, 3, 3), strides=(1, 2, 2), upsample_kernel_size=(2, 2), filters=(4, 8, 16),
            deep_supervision=False,
        ),
        ("input_block.", "downsamples.", "bottleneck."),
    ),
    # MONAI 1.6.1 builds SwinUNETR with depths (1, 1), but without swinViT.layers3/4 its forward
    # fails (layers3[0]) while encoder10 is still built: four stages of depth 1 is the smallest.
    "swinunetr": (
        lambda n: SwinUNETR(1, n, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        ("swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10."),
    ),
    "basicunet": (
        lambda n: BasicUNet(3, 1, n, features=(4, 4, 8, 8, 16, 4)),
        ("conv_0.", "down_1.", "down_2.", "down_3.", "down_4."),
    ),
    "flexibleunet": (
        lambda n: FlexibleUNet(1, n, "resnet10", pretrained=False, spatial_dims=2, decoder_channels=(8, 8, 8, 8, 8)),
        ("encoder.",),
    ),
}


def _head(build) -> set[str]:
    """Parameters whose shape changes with the number of output channels."""
    shapes = {name: p.shape for name, p in build(2).named_parameters()}
    return {name for name, p in build(3).named_parameters() if shapes[name] != p.shape}


def _names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_and_all_but_head_presets(family):
    build, prefixes = FAMILIES[family]
    model, head = build(2), _head(build)
    names = _names(model)
    assert head and head < names

    encoder = frozen_parameter_names(model, head, "encoder")
    assert encoder == {n for n in names if n.startswith(prefixes)}
    assert encoder and encoder.isdisjoint(head) and encoder < names - head

    frozen = frozen_parameter_names(model, head, "all_but_head")
    assert frozen == names - head
    apply_freezing(model, frozen)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head


def test_encoder_rule_follows_base_classes_and_never_takes_the_head():
    class BundleUNet(BasicUNet):
        pass

    build = FAMILIES["basicunet"][0]
    head = _head(build)
    assert frozen_parameter_names(BundleUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)), head, "encoder") == (
        frozen_parameter_names(build(2), head, "encoder")
    )

    class UNet(nn.Module):  # the UNet rule, with a head inside its encoder
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1))

    assert frozen_parameter_names(UNet(), {"model.0.weight"}, "encoder") == {"model.0.bias"}
    with pytest.raises(MedftError, match="UNet rule matches no parameter"):
        frozen_parameter_names(UNet(), {"model.0.weight", "model.0.bias"}, "encoder")


def test_patterns_add_to_the_preset_and_may_freeze_the_head():
    model, head = _unet(2), _head(_unet)
    assert frozen_parameter_names(model, head) == set()
    top_up_layer = {n for n in _names(model) if n.startswith("model.2.")}
    assert frozen_parameter_names(model, head, "none", [r"^model\.2\."]) == top_up_layer > head
    assert frozen_parameter_names(model, head, patterns=r"^model\.2\.") == top_up_layer  # one string, one pattern
    assert FreezeStage(0, patterns=r"^model\.2\.").patterns == [r"^model\.2\."]
    encoder = frozen_parameter_names(model, head, "encoder")
    with_bias = frozen_parameter_names(model, head, "encoder", ["submodule\\.2\\..*bias$"])
    assert with_bias - encoder == {n for n in _names(model) if n.startswith("model.1.submodule.2.") and n.endswith("bias")}


def _train(model, frozen, optimizer, steps, set_to_none=True):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        set_train_mode(model, frozen)
        x = torch.randn(2, 1, 8, 8, 8, generator=gen)
        y = torch.randint(0, 2, (2, 8, 8, 8), generator=gen)
        optimizer.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _bn_buffers(model, frozen, inside: bool) -> set[str]:
    """Running statistics of the batch norms whose weight is (or is not) frozen."""
    return {
        name
        for name, _ in model.named_buffers()
        if (name.rsplit(".", 1)[0] + ".weight" in frozen) == inside
    }


def test_frozen_tensors_and_running_stats_stay_bit_identical_under_adamw():
    torch.manual_seed(0)
    model, head = _unet(2), _head(_unet)
    frozen = frozen_parameter_names(model, head, "encoder")
    apply_freezing(model, frozen)
    optimizer = torch.optim.AdamW(parameter_groups(model, head, lr=1e-2, head_lr=1e-1, weight_decay=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, frozen, optimizer, steps=3)
    after = model.state_dict()

    assert {n for n in frozen if torch.equal(after[n], before[n])} == frozen
    frozen_stats = _bn_buffers(model, frozen, inside=True)
    assert len(frozen_stats) == 9  # running mean, var and count of 3 batch norms
    assert all(torch.equal(after[n], before[n]) for n in frozen_stats)
    trainable = _names(model) - frozen
    assert not any(torch.equal(after[n], before[n]) for n in trainable)
    assert not any(torch.equal(after[n], before[n]) for n in _bn_buffers(model, frozen, inside=False))


def test_freezing_after_training_drops_stale_gradients():
    torch.manual_seed(0)
    model, head = _unet(2), _head(_unet)
    optimizer = torch.optim.AdamW(parameter_groups(model, head, lr=1e-2, head_lr=1e-2, weight_decay=0.1))
    _train(model, set(), optimizer, steps=1, set_to_none=False)  # AdamW now has momentum everywhere
    frozen = frozen_parameter_names(model, head, "encoder")
    apply_freezing(model, frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, frozen, optimizer, steps=2, set_to_none=False)  # zero_grad keeps grads as tensors
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in frozen)


def test_train_mode_of_norms_without_parameters_and_of_dropout():
    def block():
        return nn.Sequential(nn.Conv3d(2, 2, 1), nn.BatchNorm3d(2, affine=False), nn.Dropout(0.5))

    model = nn.Sequential(block(), block(), nn.InstanceNorm3d(2, track_running_stats=True))
    set_train_mode(model, {"0.0.weight", "0.0.bias"})
    assert not model[0][1].training and model[1][1].training
    assert model[0][2].training  # dropout keeps train mode, frozen or not
    assert model[2].training  # its nearest ancestor with parameters (the root) is not all frozen
    set_train_mode(model, _names(model))
    assert not model[1][1].training and not model[2].training


def test_schedule_gives_the_stage_in_force_at_each_epoch():
    model, head = _unet(2), _head(_unet)
    schedule = FreezeSchedule([FreezeStage(0, "all_but_head"), FreezeStage(2, "encoder"), FreezeStage(4, "none")])
    all_but_head, encoder = _names(model) - head, frozen_parameter_names(model, head, "encoder")
    expected = [all_but_head, all_but_head, encoder, encoder, set(), set()]
    assert [schedule.frozen_at(model, head, epoch) for epoch in range(6)] == expected
    assert [schedule.changes_at(epoch) for epoch in range(6)] == [True, False, True, False, True, False]


def test_schedule_without_epoch_0_starts_unfrozen_and_rejects_bad_order():
    model, head = _unet(2), _head(_unet)
    schedule = FreezeSchedule([FreezeStage(3, "encoder", patterns=["^model\\.2\\."])])
    assert schedule.frozen_at(model, head, 2) == set()
    assert head <= schedule.frozen_at(model, head, 3)
    for epochs in [(0, 2, 2), (0, 3, 1)]:
        with pytest.raises(MedftError, match=f"strictly increasing.*{re.escape(str(list(epochs)))}"):
            FreezeSchedule([FreezeStage(e) for e in epochs])


def test_validate_reports_a_stage_that_does_not_fit_before_training():
    model, head = _unet(2), _head(_unet)
    with pytest.raises(MedftError, match="'decoder'"):
        FreezeSchedule([FreezeStage(0, "encoder"), FreezeStage(9, patterns=("decoder",))]).validate(model, head)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, h: frozen_parameter_names(m, h, "encodr"), "'encodr'"),
        (lambda m, h: frozen_parameter_names(m, h, "none", ["nothing_here"]), "'nothing_here'.*model.0.conv"),
        (
            lambda m, h: frozen_parameter_names(nn.Sequential(nn.Conv2d(1, 2, 1)), {"0.bias"}, "encoder"),
            "Sequential.*UNet.*patterns",
        ),
        (lambda m, h: frozen_parameter_names(m, h | {"module.out.weight"}, "all_but_head"), "module.out.weight"),
        (lambda m, h: apply_freezing(m, {"model.9.weight"}), "model.9.weight"),
    ],
)
def test_errors_name_the_value(call, message):
    with pytest.raises(MedftError, match=message):
        call(_unet(2), _head(_unet))


@pytest.mark.parametrize("make, message", [
    (lambda: FreezeStage(0, "encodr"), "preset.*'encodr'"),
    (lambda: FreezeStage(0, patterns=["down_("]), "freeze pattern 'down_\\(' is not a valid regular expression.*Fix: escape"),
    (lambda: FreezeStage(0, patterns=[""]), "empty freeze pattern.*Fix"),
    (lambda: FreezeStage(-1), "epoch.*greater than or equal to 0"),
])
def test_a_stage_is_checked_when_made_as_in_a_config(make, message):
    """One FreezeStage, the config's: made in code, it checks what a config file's stage is checked for."""
    with pytest.raises(ValidationError, match=re.compile(message, re.S)):
        make()


def test_parameter_groups_hold_every_parameter_once():
    model, head = _unet(2), _head(_unet)
    apply_freezing(model, frozen_parameter_names(model, head, "all_but_head"))
    groups = parameter_groups(model, head, lr=1e-3, head_lr=1e-2, weight_decay=0.05)

    assert [g["name"] for g in groups] == list(GROUP_NAMES)
    counts = Counter(id(p) for g in groups for p in g["params"])
    assert counts == Counter(id(p) for p in model.parameters()) and set(counts.values()) == {1}
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        part, decay = group["name"].split("/")
        names = {by_id[id(p)] for p in group["params"]}
        assert names <= head if part == "head" else names.isdisjoint(head)
        assert group["lr"] == (1e-2 if part == "head" else 1e-3)
        assert group["weight_decay"] == (0.05 if decay == "decay" else 0.0)
        assert all((p.ndim > 1) == (decay == "decay") for p in group["params"])
    optimizer = torch.optim.AdamW(groups)
    assert [g["name"] for g in optimizer.param_groups] == list(GROUP_NAMES)


def test_a_head_tensor_registered_under_two_names_counts_once():
    """DynUNet with deep supervision registers its supervision heads twice; state_dict lists both names."""
    def build(n):
        return DynUNet(3, 1, n, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16], deep_supervision=True, deep_supr_num=1)

    model = build(2)
    head = {k for k, v in model.state_dict().items() if v.shape != build(3).state_dict()[k].shape}
    assert any(name.startswith("skip_layers.") for name in head)  # an alias, absent from named_parameters()
    frozen = frozen_parameter_names(model, head, "all_but_head")
    trainable = _names(model) - frozen
    assert trainable and all(name.split(".")[0] in ("output_block", "deep_supervision_heads") for name in trainable)


@pytest.mark.parametrize("stage", [
    FreezeStage(0, patterns=["."]),
    FreezeStage(0, "all_but_head", patterns=[r"^model\.2\."]),
])
def test_a_stage_that_leaves_nothing_to_train_is_refused_before_training(stage):
    """It used to reach the first step: "element 0 of tensors does not require grad" (an internal error)."""
    model, head = _unet(2), _head(_unet)
    with pytest.raises(MedftError, match=r"freeze stage at epoch 0 .*freezes all \d+ parameter tensors of UNet: "
                                         r"nothing would train. Fix"):
        FreezeSchedule([stage]).validate(model, head)
    assert frozen_parameter_names(model, head, "all_but_head") == _names(model) - head  # the head alone trains: fine


def _biases(model: nn.Module) -> set[str]:
    return {name for name in _names(model) if is_bias(name)}


def test_bitfit_trains_only_the_biases_and_the_head():
    torch.manual_seed(0)
    model, head = _unet(2), _head(_unet)
    schedule = FreezeSchedule([], method="bitfit")
    frozen = schedule.frozen_at(model, head, 0)
    assert frozen == _names(model) - _biases(model) - head == method_frozen_names(model, head, "bitfit")
    assert {"model.0.conv.unit0.adn.N.bias", "model.0.conv.unit0.conv.bias"} < _biases(model)  # norm shifts are biases
    assert "model.0.conv.unit0.adn.N.weight" in frozen  # norm scales are not
    apply_freezing(model, frozen)
    optimizer = torch.optim.AdamW(parameter_groups(model, head, lr=1e-2, head_lr=1e-1, weight_decay=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, frozen, optimizer, steps=3)
    after = model.state_dict()

    changed = {name for name in after if not torch.equal(after[name], before[name])}
    head_norm_stats = _bn_buffers(model, frozen, inside=False)
    assert {name.rsplit(".", 1)[0] for name in head_norm_stats} == {"model.2.0.adn.N"}  # the head's own batch norm
    assert changed == _biases(model) | head | head_norm_stats  # batch norms whose scale is frozen keep their statistics
    assert not model.model[0].conv.unit0.adn.N.training


def test_bitfit_adds_to_every_freeze_stage_and_a_stage_never_unfreezes_what_it_freezes():
    model, head = _unet(2), _head(_unet)
    bitfit = method_frozen_names(model, head, "bitfit")
    encoder = frozen_parameter_names(model, head, "encoder")
    schedule = FreezeSchedule([FreezeStage(0, "encoder"), FreezeStage(2, "none")], method="bitfit")
    assert schedule.frozen_at(model, head, 0) == bitfit | encoder
    assert _biases(model) & encoder <= schedule.frozen_at(model, head, 1)  # the encoder's biases are frozen too
    assert schedule.frozen_at(model, head, 2) == bitfit
    assert FreezeSchedule([FreezeStage(0, patterns=[r"^model\.2\."])], "bitfit").frozen_at(model, head, 0) >= head
    assert method_frozen_names(model, head, "full") == set() == FreezeSchedule([]).frozen_at(model, head, 0)


def test_bitfit_on_a_network_without_biases_or_head_is_refused_before_training():
    model = nn.Sequential(nn.Conv3d(1, 2, 1, bias=False))
    with pytest.raises(MedftError, match="with finetune.method bitfit freezes all 1 parameter tensors.*Fix:"):
        FreezeSchedule([], "bitfit").validate(model, set())
    with pytest.raises(MedftError, match="finetune.method must be one of full, bitfit, lora, got 'adapters'"):
        FreezeSchedule([], "adapters")


def test_trainable_count_by_hand():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.Conv3d(2, 2, 1))
    model.append(model[2])  # one tensor under two names counts once
    count = TrainableCount.of(model, method_frozen_names(model, set(), "bitfit"))
    # conv 54 + 2, norm 2 + 2, conv 4 + 2: 66 in 6 tensors; the biases 2 + 2 + 2 train
    assert count == TrainableCount(6, 66, 3, 6)
    assert str(count) == "6 of 66 parameters (9.1%) in 3 of 6 tensors"
    assert str(TrainableCount(1_234, 2_468_000, 1, 200)) == "1,234 of 2,468,000 parameters (0.05%) in 1 of 200 tensors"
    assert str(TrainableCount(1_234, 2_468_000, 1, 200, 24)).endswith("in 1 of 200 tensors and 24 adapter tensors")
    assert str(TrainableCount.of(model, set())).startswith("66 of 66 parameters (100.0%)")
