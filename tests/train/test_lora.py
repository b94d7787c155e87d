"""finetune.method lora: which layers get adapters, merged weights, and runs that change only adapters and head."""
import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

from medft.bundle.export import export_run
from medft.config import LoraConfig, load_config
from medft.errors import MedftError
from medft.train.freezing import TrainableCount, method_frozen_names
from medft.train.lora import adapter_state_dict, add_lora, is_adapter, lora_targets, merged_state_dict, restore_adapted
from medft.train.network import prepare_network
from medft.train.recipe import run_training
from tests.bundle.helpers import pretrained
from tests.train.helpers import lora_config, make_config


def _unet(out: int = 3) -> nn.Module:
    return UNet(3, 1, out, (4, 8, 16), (2, 2), num_res_units=2)


def _head(model: nn.Module, prefix: str) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


def _randomise_adapters(model: nn.Module, seed: int = 0) -> None:
    """peft starts B at zero (the adapted network computes the pretrained one); give it values to test merging."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter(name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _dilated() -> nn.Module:
    """MeshNet's shape: dilated convolutions that keep the size (padding = dilation), a 1 x 1 x 1 head."""
    return nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 6, 3, padding=2, dilation=2), nn.ReLU(),
                         nn.Conv3d(6, 6, 3, padding=4, dilation=4, padding_mode="reflect"), nn.ReLU(), nn.Conv3d(6, 3, 1))


FAMILIES = {  # a small network of each family, the prefix of its head, an input
    "dilated": (_dilated, "6.", (1, 1, 16, 20, 16)),
    "UNet": (_unet, "model.2.", (1, 1, 32, 32, 32)),
    "SegResNet": (lambda: SegResNet(3, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1), blocks_up=(1,)),
                  "conv_final.", (1, 1, 16, 16, 16)),
    "DynUNet": (lambda: DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16], res_block=True),
                "output_block.", (1, 1, 16, 16, 16)),
    "SwinUNETR": (lambda: SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
                  "out.", (1, 1, 64, 64, 64)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_convolution_and_linear_layer_outside_the_head_is_adapted_and_the_merge_computes_the_same(family):
    build, prefix, shape = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    head = _head(model, prefix)
    layers = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv3d, nn.Linear)) and not f"{name}.".startswith(prefix)}
    transposed = {name for name, m in model.named_modules() if isinstance(m, nn.ConvTranspose3d) and not f"{name}.".startswith(prefix)}
    targets = add_lora(model, head, LoraConfig(rank=2, alpha=4))
    assert set(targets.layers) == layers and set(targets.transposed) == transposed
    if family == "SwinUNETR":  # the transformer's attention and MLP layers are among them
        assert any(name.endswith("attn.qkv") for name in layers) and any(name.endswith("mlp.linear1") for name in layers)
    adapters = [name for name, _ in model.named_parameters() if is_adapter(name)]
    assert len(adapters) == 2 * len(layers)  # lora_A and lora_B of each
    assert not any(name.startswith(prefix) and is_adapter(name) for name in adapters)

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        _randomise_adapters(model)
        adapted = model(x)
    torch.manual_seed(0)
    plain = build().eval()
    plain.load_state_dict(merged_state_dict(model))  # strict: the plain network's own names, nothing else
    with torch.no_grad():
        merged = plain(x)
    assert not torch.allclose(before, adapted, atol=1e-3)  # the adapters change the output ...
    assert torch.allclose(merged, adapted, rtol=1e-4, atol=1e-4)  # ... and the merged weights compute the same


def test_a_rank_2_adapter_of_a_3x3x3_convolution_is_2_x_in_x_27_plus_out_x_2_parameters():
    model = nn.Sequential(nn.Conv3d(5, 7, 3, padding=1), nn.Conv3d(7, 3, 1))
    targets = add_lora(model, {"1.weight", "1.bias"}, LoraConfig(rank=2))
    assert targets.layers == ("0",)
    sizes = {name: p.numel() for name, p in model.named_parameters() if is_adapter(name)}
    assert sizes == {"0.lora_A.default.weight": 2 * 5 * 27, "0.lora_B.default.weight": 7 * 2}
    assert targets.describe(model, 2) == "LoRA rank 2 on 1 layers (284 adapter parameters)"


def test_target_patterns_choose_layers_and_a_pattern_that_chooses_none_is_named():
    model = _unet()
    head = _head(model, "model.2.")
    chosen = lora_targets(model, head, [r"^model\.0\."])
    assert chosen.layers and all(name.startswith("model.0.") for name in chosen.layers) and not chosen.transposed
    with pytest.raises(MedftError, match=r"finetune.lora.target_modules: 'encoder' matches none of the .* layers of UNet .*"
                                         r"Fix: correct the regular expression \(module names"):
        lora_targets(model, head, ["encoder"])
    with pytest.raises(MedftError, match="no convolution or linear layer outside its head"):
        lora_targets(nn.Sequential(nn.Conv3d(1, 2, 1)), {"0.weight", "0.bias"})


def test_the_lora_method_freezes_all_but_adapters_and_head_and_counts_adapters_as_trainable():
    model = _unet()
    head = _head(model, "model.2.")
    with pytest.raises(MedftError, match="has no adapters"):
        method_frozen_names(model, head, "lora")
    own = sum(p.numel() for p in model.parameters())
    add_lora(model, head, LoraConfig(rank=2))
    frozen = method_frozen_names(model, head, "lora")
    names = {name for name, _ in model.named_parameters()}
    assert names - frozen == {n for n in names if is_adapter(n)} | head
    count = TrainableCount.of(model, frozen)
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    assert count.total_parameters == own  # the network's own: adapters are added, not counted in the total
    assert count.parameters == sum(size for name, size in sizes.items() if name not in frozen)


def test_a_freeze_stage_freezes_adapters_too_and_never_unfreezes_pretrained_weights():
    from medft.config import FreezeStage
    from medft.train.freezing import FreezeSchedule

    model = _unet()
    head = _head(model, "model.2.")
    add_lora(model, head, LoraConfig(rank=2))
    schedule = FreezeSchedule([FreezeStage(0, "all_but_head"), FreezeStage(1, "encoder"), FreezeStage(2)], "lora")
    names = {name for name, _ in model.named_parameters()}
    adapters = {name for name in names if is_adapter(name)}
    encoder_adapters = {name for name in adapters if name.startswith(("model.0.", "model.1.submodule.0."))}
    assert encoder_adapters and names - schedule.frozen_at(model, head, 0) == head  # LP-FT with LoRA: the head alone
    assert names - schedule.frozen_at(model, head, 1) == head | (adapters - schedule.frozen_at(model, head, 1))
    assert not encoder_adapters - schedule.frozen_at(model, head, 1)  # the encoder's adapters wait
    assert names - schedule.frozen_at(model, head, 2) == head | adapters  # then every adapter, never a pretrained weight


def test_restoring_on_other_pretrained_weights_is_refused():
    torch.manual_seed(0)
    model = _unet()
    head = _head(model, "model.2.")
    add_lora(model, head, LoraConfig(rank=2))
    _randomise_adapters(model)
    merged, adapters = merged_state_dict(model), adapter_state_dict(model)
    torch.manual_seed(0)
    same = _unet()
    add_lora(same, head, LoraConfig(rank=2))
    restore_adapted(same, merged, adapters, "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values(), strict=True))
    torch.manual_seed(1)
    other = _unet()
    add_lora(other, head, LoraConfig(rank=2))
    with pytest.raises(MedftError, match=r"last.pt: its adapters were trained on other pretrained weights .* Fix: restore the bundle"):
        restore_adapted(other, merged, adapters, "last.pt")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    torch.set_num_threads(1)  # as every test runs (conftest): a module fixture runs before the test's own fixtures
    root = tmp_path_factory.mktemp("lora")
    config = lora_config(root)
    run_training(config, root / "out")
    return root, config


def test_a_lora_run_changes_only_adapters_and_the_head(lora_run):
    root, config = lora_run
    before = pretrained(root / "bundle")
    state = torch.load(root / "out" / "checkpoints" / "last.pt", weights_only=False)
    prepared = prepare_network(config.model, 3)
    network, head = prepared.network, prepared.head
    targets = add_lora(network, head, config.finetune.lora)
    adapted = {f"{layer}.weight" for layer in targets.layers}
    assert set(state["model"]) == set(before)  # the merged weights: the network's own names
    for name, tensor in state["model"].items():
        if name in head:
            continue
        if name in adapted:  # pretrained + B @ A: changed, by a product of rank 2 at most
            delta = (tensor - before[name]).flatten(1)
            assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= 2, name
        else:  # every other tensor, batch-norm statistics included, is the pretrained one
            assert torch.equal(tensor, before[name]), name
    assert set(state["adapter"]) == {n for n, _ in network.named_parameters() if is_adapter(n)}

    log = (root / "out" / "train.log").read_text()
    assert f"finetune.method lora: LoRA rank 2 on {len(targets.layers)} layers" in log
    frozen = method_frozen_names(network, head, "lora")
    count = TrainableCount.of(network, frozen)
    assert f"with finetune.method lora, {len(frozen)} of {count.total_tensors} parameter tensors frozen; trainable: {count}" in log
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert (summary["trainable_parameters"], summary["total_parameters"]) == (count.parameters, count.total_parameters)


def test_the_merged_export_predicts_what_the_adapted_run_predicts(lora_run, tmp_path):
    root, config = lora_run
    state = torch.load(root / "out" / "checkpoints" / "best.pt", weights_only=False)
    prepared = prepare_network(config.model, 3)
    adapted = prepared.network
    add_lora(adapted, prepared.head, config.finetune.lora)
    restore_adapted(adapted, state["model"], state["adapter"], "best.pt")  # the unmerged network as it trained

    bundle = export_run(root / "out", tmp_path / "exported")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    plain = parser.get_parsed_content("network_def")  # plain MONAI: no peft, no medft
    plain.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
    image = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
    adapted.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(image), adapted(image), rtol=1e-4, atol=1e-5)


def test_a_stopped_lora_run_resumes_to_the_run_that_did_not_stop(lora_run, tmp_path):
    root, config = lora_run

    class Stop(Exception):
        pass

    def stop_after_first(epoch, value):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        run_training(config, tmp_path / "stopped", on_validation=stop_after_first)
    run_training(config, tmp_path / "stopped", resume=True)
    expected = torch.load(root / "out" / "checkpoints" / "last.pt", weights_only=False)
    got = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=False)
    for key in ("adapter", "model"):
        assert [n for n in expected[key] if not torch.equal(expected[key][n], got[key][n])] == [], key


def test_lora_settings_need_the_lora_method(tmp_path):
    base = make_config(tmp_path, freeze=[])
    config = load_config(base, ["finetune.method=lora"])
    assert config.finetune.lora == LoraConfig() and config.finetune.lora.scale == 1.0
    assert load_config(base, ["finetune.method=lora", "finetune.lora.rank=4", "finetune.lora.alpha=8"]).finetune.lora.scale == 2.0
    with pytest.raises(MedftError, match="finetune.lora sets adapters, and finetune.method is full, which trains none. "
                                         "Fix: set finetune.method: lora"):
        load_config(base, ["finetune.lora.rank=4"])
    with pytest.raises(MedftError, match="not a valid regular expression"):
        load_config(base, ["finetune.method=lora", "finetune.lora.target_modules=['(']"])
