"""The postprocessors through OpenOOD's pipeline registry, their options, and pickling."""
import os
import pickle

import pytest
import torch

from bench_helpers import one_line


def _pipeline_config(name, **args):
    from openood.utils import Config
    return Config({"dataset": {"name": "tinybench"},
                   "postprocessor": {"name": name, "postprocessor_args": dict(epochs=1, **args)}})


def test_pipeline_registry_builds_ours_with_base(oo, checkout, monkeypatch):
    from openood.postprocessors import get_postprocessor
    monkeypatch.chdir(checkout)  # main.py runs from the checkout: base YAMLs in ./configs
    pp = get_postprocessor(_pipeline_config("umap_msp"))
    assert type(pp).__name__ == "UMAPPostprocessor" and pp.base_name == "msp"
    assert type(pp.base).__name__ == "BasePostprocessor" and pp.APS_mode is False
    pp = get_postprocessor(_pipeline_config("um", loss_constraint=0.2))
    assert pp.base_name == "ebo" and pp.options.xi.value == 0.2


def test_bad_postprocessor_args(oo, checkout, monkeypatch):
    from openood.postprocessors import get_postprocessor
    monkeypatch.chdir(checkout)
    with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_args.lr: lr .*-1"):
        get_postprocessor(_pipeline_config("um", lr=-1))
    with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_args.freeze_weights: "):
        get_postprocessor(_pipeline_config("umap", freeze_weights="maybe"))
    with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_args.xi_keep_ratio: .*1.5"):
        get_postprocessor(_pipeline_config("umap", xi_keep_ratio=1.5))
    with pytest.raises(ValueError, match=r"has unknown keys \['xi_preprocessing'\]; valid keys "):
        get_postprocessor(_pipeline_config("umap", xi_preprocessing="test"))
    with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_args.fit_check must be one "
                                         r"of \('stop', 'warn'\), got 'ignore'"):
        get_postprocessor(_pipeline_config("um", fit_check="ignore"))
    with pytest.raises(ValueError, match=r"^postprocessor.postprocessor_args.batch_size must be an "
                                         r"integer >= 1, got 0 \(null: the ID training"):
        get_postprocessor(_pipeline_config("um", batch_size=0))
    options = get_postprocessor(_pipeline_config("umap", freeze_weights="false", lr="0.5")).options
    assert options.finetune.freeze_weights is False and options.finetune.lr == 0.5


def test_base_yaml_found_from_each_documented_place(oo, checkout, tmp_path, monkeypatch):
    """With a config_root holding only um.yml, the base's YAML (msp.yml) is looked up in
    config_root, $OPENOOD_CONFIG_ROOT, then $UM_PLUGIN_OPENOOD_ROOT/configs."""
    from openood.evaluation_api.postprocessor import get_postprocessor
    from um_plugin.shipped import install_configs
    only_ours = tmp_path / "ours"
    only_ours.mkdir()
    install_configs(str(only_ours))  # um.yml / umap.yml, no OpenOOD YAMLs
    monkeypatch.chdir(tmp_path)  # no ./configs
    monkeypatch.delenv("OPENOOD_CONFIG_ROOT", raising=False)
    monkeypatch.setenv("UM_PLUGIN_OPENOOD_ROOT", checkout)
    assert get_postprocessor(str(only_ours), "um_msp", "tinybench").base_name == "msp"
    monkeypatch.delenv("UM_PLUGIN_OPENOOD_ROOT")
    monkeypatch.setenv("OPENOOD_CONFIG_ROOT", os.path.join(checkout, "configs"))
    assert get_postprocessor(str(only_ours), "um_msp", "tinybench").base_name == "msp"


def test_missing_base_yaml_names_where_it_looked_and_the_three_ways(oo, tmp_path, monkeypatch):
    from openood.evaluation_api.postprocessor import get_postprocessor
    import um_plugin.openood.registry.config_discovery as ours
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENOOD_CONFIG_ROOT", raising=False)
    monkeypatch.delenv("UM_PLUGIN_OPENOOD_ROOT", raising=False)
    monkeypatch.setattr(ours.openood, "__file__", str(tmp_path / "site" / "openood" / "__init__.py"))
    with pytest.raises(FileNotFoundError) as caught:
        get_postprocessor(str(tmp_path / "mine"), "um_msp", "tinybench")
    message = one_line(str(caught.value), "no config for base postprocessor 'msp'")
    assert str(tmp_path / "mine" / "postprocessors" / "msp.yml") in message
    for way in ("config_root", "$OPENOOD_CONFIG_ROOT", "$UM_PLUGIN_OPENOOD_ROOT"):
        assert way in message


def test_setup_once_per_net_and_pickles_without_net(oo, tiny_bench, checkout):
    from openood.evaluation_api.postprocessor import get_postprocessor
    import dataclasses

    from openood.networks.lenet import LeNet
    from torch.utils.data import DataLoader

    class LeNetFC(LeNet):  # ReactNet also needs get_fc_layer(), as OpenOOD's ResNets have
        def get_fc_layer(self):
            return self.fc

    pp = get_postprocessor(os.path.join(checkout, "configs"), "umap_react", tiny_bench["name"])
    pp.options = dataclasses.replace(  # a list of tensors: the images as given ('test')
        pp.options, finetune=dataclasses.replace(pp.options.finetune, epochs=1),
        data=dataclasses.replace(pp.options.data, preprocessing="test"))
    x = torch.randn(6, 3, 28, 28)
    y = torch.arange(6) % 3
    loader = DataLoader([{"data": a, "label": b} for a, b in zip(x, y)], batch_size=6)
    net = LeNetFC(num_classes=3, num_channel=3)
    with oo.enable_cpu_fallback():  # ReAct's setup calls .cuda()
        pp.setup(net, {"train": loader, "val": loader}, {"val": loader})
        baked = {k: v.clone() for k, v in net.state_dict().items()}
        pp.setup(net, {"train": loader, "val": loader}, {"val": loader})  # no second UMAP run
        pred, conf = pp.postprocess(net, x[:4])
    assert all(torch.equal(baked[k], v) for k, v in net.state_dict().items())  # via ReactNet, which OpenOOD's Evaluator skips here
    assert pred.shape == conf.shape == (4,)
    clone = pickle.loads(pickle.dumps(pp))  # what eval_ood.py saves and reloads
    assert clone.base_name == "react" and clone._wrapped == {} and clone.xi == pp.xi
    fresh = LeNetFC(num_classes=3, num_channel=3)
    before = fresh.fc.weight.detach().clone()
    with oo.enable_cpu_fallback():
        clone.setup(fresh, {"train": loader, "val": loader}, {"val": loader})
    assert not torch.equal(before, fresh.fc.weight)  # a reloaded postprocessor runs UMAP again


def test_xi_settings_are_typed_and_those_not_the_authors_or_shipped_are_named(oo):
    from um_plugin.core.xi import OFFICIAL_ESTIMATE_KEEP_RATIO
    from um_plugin.openood.settings.options import postprocessor_options
    from um_plugin.openood.settings.presets import differences
    authors = postprocessor_options({}, "um")
    assert authors.xi.value is None and authors.xi.keep_ratio == OFFICIAL_ESTIMATE_KEEP_RATIO
    assert not [d for d in differences(authors, 256) if "xi" in d or "loss_constraint" in d]
    mine = postprocessor_options({"xi_keep_ratio": "0.9", "xi_draws": "3", "xi_seed": 2}, "um")
    assert (mine.xi.keep_ratio, mine.xi.draws, mine.xi.seed) == (0.9, 3, 2)
    assert mine.xi.estimate_kwargs == {"keep_ratio": 0.9, "seed": 2, "draws": 3}
    assert differences(mine, 256) == ["xi_keep_ratio 0.9 (authors: 0.965)",
                                      "xi_draws 3 (authors: 1 random mask)",
                                      "xi_seed 2 (shipped: 0)"]
