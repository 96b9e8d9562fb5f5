"""The postprocessors through OpenOOD's pipeline registry, their options, and pickling."""
import pickle

import pytest
import torch


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
    assert pp.base_name == "ebo" and pp.options.xi == 0.2


def test_bad_postprocessor_args(oo, checkout, monkeypatch):
    from openood.postprocessors import get_postprocessor
    monkeypatch.chdir(checkout)
    with pytest.raises(ValueError, match=r"postprocessor_args.lr must be a finite number > 0, got -1"):
        get_postprocessor(_pipeline_config("um", lr=-1))
    with pytest.raises(ValueError, match=r"freeze_weights"):
        get_postprocessor(_pipeline_config("umap", freeze_weights="maybe"))
    assert get_postprocessor(_pipeline_config("umap", freeze_weights=False)).options.freeze_weights is False


def test_missing_base_yaml_is_not_downloaded(oo, tmp_path, monkeypatch):
    from openood.postprocessors import get_postprocessor
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENOOD_CONFIG_ROOT", str(tmp_path))
    import um_plugin.openood.postprocessors as ours
    monkeypatch.setattr(ours, "base_config_candidates",
                        lambda base, root=None: [str(tmp_path / "postprocessors" / f"{base}.yml")])
    with pytest.raises(FileNotFoundError, match=r"no config for base postprocessor 'ebo'; looked in"):
        get_postprocessor(_pipeline_config("um"))


def test_setup_once_per_net_and_pickles_without_net(oo, tiny_bench, checkout):
    from openood.evaluation_api.postprocessor import get_postprocessor
    import dataclasses
    import os

    from openood.networks.lenet import LeNet
    from torch.utils.data import DataLoader

    class LeNetFC(LeNet):  # ReactNet also needs get_fc_layer(), as OpenOOD's ResNets have
        def get_fc_layer(self):
            return self.fc

    pp = get_postprocessor(os.path.join(checkout, "configs"), "umap_react", tiny_bench["name"])
    pp.options = dataclasses.replace(pp.options, epochs=1)
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
