"""The network a run trains, as checkpoints and exports record it."""
from medft.config import ModelConfig
from medft.train.network import prepare_network
from tests.bundle.helpers import make_bundle
from tests.bundle.test_adapt import FAMILIES


def test_a_network_that_takes_num_classes_is_adapted_and_recorded_with_it(tmp_path):
    """DiNTS (pancreas_ct_dints_segmentation) has num_classes where other networks have out_channels."""
    network_def = FAMILIES["dints"][0]
    root = make_bundle(tmp_path / "bundle", config={
        "classes": 2, "network_def": {**network_def, "num_classes": "@classes"}})
    prepared = prepare_network(ModelConfig(bundle=str(root), in_channels=2), 4)
    assert prepared.network_def == {**network_def, "num_classes": 4, "in_channels": 2}
    assert prepared.head == {"stem_finals.1.weight", "stem_finals.1.bias"}
    assert prepared.network.stem_finals[1].weight.shape[0] == 4


def test_a_run_of_such_a_network_is_rebuilt_with_its_own_class_count(tmp_path):
    """The run trains 3 classes; the bundle's network_def still says 2."""
    import shutil

    from medft.data.preprocessing import Preprocessing
    from medft.evaluate.inference import load_model
    from medft.formats.checkpoint import Checkpoint, write_checkpoint
    from tests.train.helpers import make_config

    make_bundle(tmp_path / "bundle", config={"network_def": FAMILIES["dints"][0]})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(make_config(tmp_path), run / "config.yaml")
    prepared = prepare_network(ModelConfig(bundle=str(tmp_path / "bundle")), 3)
    write_checkpoint(Checkpoint(epoch=1, step=0, model=prepared.network.state_dict(), network_def=prepared.network_def,
                                class_names=["background", "anterior", "posterior"], optimizer={}, scheduler={}, scaler={},
                                early_stopping={}, rng={}, preprocessing=Preprocessing.medft().to_dict()),
                     run / "checkpoints" / "last.pt")
    model = load_model(run, checkpoint="last")
    assert model.network.stem_finals[1].weight.shape[0] == 3
