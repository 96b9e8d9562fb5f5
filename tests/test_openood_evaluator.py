"""OpenOOD's Evaluator API with postprocessor_name='umap_ebo' / 'um' on a tiny offline benchmark."""
import os
import urllib.request

import pytest
import torch

from bench_helpers import one_line
from openood_fixtures import lenet


def _no_download(*args, **kwargs):
    raise AssertionError(f"OpenOOD tried to download {args[:1]}")


@pytest.mark.parametrize("name", ["umap_ebo", "um"])
def test_evaluator_runs_method_and_returns_metrics(oo, tiny_bench, quick_configs, monkeypatch,
                                                   capsys, name):
    from openood.evaluation_api import Evaluator
    monkeypatch.setattr(urllib.request, "urlretrieve", _no_download)
    import gdown
    monkeypatch.setattr(gdown, "download", _no_download)

    net = lenet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config_root = quick_configs
    with oo.enable_cpu_fallback():
        evaluator = Evaluator(net, id_name=tiny_bench["name"], data_root=tiny_bench["data_root"],
                              config_root=config_root, postprocessor_name=name,
                              batch_size=8, num_workers=0)
        metrics = evaluator.eval_ood(progress=False)
    out = capsys.readouterr().out
    assert "loss constraint estimated" in out and "on ID validation data" in out  # fit check
    assert "differs from the authors' setting in: epochs 10 (authors: 100)" in out

    assert list(metrics.columns) == ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
    assert list(metrics.index) == ["noise_near", "nearood", "noise_far", "farood"]
    assert metrics.notna().all().all()
    pp = evaluator.postprocessor
    assert pp.mode == name.split("_")[0] and pp.base_name == "ebo" and pp.xi > 0
    assert evaluator.net is net and type(net).__name__ == "LeNet"
    after = net.state_dict()
    assert set(after) == set(before)  # a plain LeNet state_dict, masks baked away
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the network was not modified by the postprocessor"
    if name.startswith("umap"):
        zeros = (after["fc.weight"] == 0).float().mean().item()
        assert 0.15 < zeros < 0.25  # 20% of the weights masked (keep_ratio 0.8)
        # UMAP only masks: surviving weights keep their values
        kept = after["fc.weight"] != 0
        assert torch.equal(after["fc.weight"][kept], before["fc.weight"][kept])


def test_evaluator_shorthand_picks_base_and_aps(oo, tiny_bench, checkout):
    from openood.evaluation_api.postprocessor import get_postprocessor
    pp = get_postprocessor(os.path.join(checkout, "configs"), "umap_odin", tiny_bench["name"])
    assert type(pp).__name__ == "UMAPPostprocessor" and pp.base_name == "odin"
    assert pp.APS_mode is True and pp.hyperparam_search_done is False
    assert set(pp.args_dict) == {"temperature", "noise"}  # ODIN's own search space
    pp.set_hyperparam([10, 0.0028])
    assert pp.get_hyperparam() == [10, 0.0028]


def test_unknown_base_lists_known_names(oo, tiny_bench, checkout):
    from openood.evaluation_api.postprocessor import get_postprocessor
    with pytest.raises(ValueError, match=r"unknown base postprocessor 'nosuch'.*'ebo'.*'msp'"):
        get_postprocessor(os.path.join(checkout, "configs"), "umap_nosuch", tiny_bench["name"])


def test_config_root_copy_overrides_packaged_yaml(oo, tiny_bench, checkout, tmp_path):
    import shutil

    from openood.evaluation_api.postprocessor import get_postprocessor
    from um_plugin.shipped import install_configs
    root = tmp_path / "configs"
    (root / "postprocessors").mkdir(parents=True)
    shutil.copy(os.path.join(checkout, "configs", "postprocessors", "msp.yml"), root / "postprocessors")
    install_configs(str(root))
    text = (root / "postprocessors" / "um.yml").read_text().replace("epochs: 100", "epochs: 3")
    (root / "postprocessors" / "um.yml").write_text(text.replace("base: ebo", "base: msp"))
    pp = get_postprocessor(str(root), "um", tiny_bench["name"])
    assert pp.options.finetune.epochs == 3 and pp.base_name == "msp" and pp.APS_mode is False


def test_second_method_on_the_same_network_is_refused(oo, tiny_bench, quick_configs):
    """um_msp then umap_msp on one network is refused: the second would fine-tune the first's
    result and print it under its own name."""
    import copy

    from openood.evaluation_api import Evaluator
    net = lenet()
    pristine = copy.deepcopy(net)
    kwargs = dict(id_name=tiny_bench["name"], data_root=tiny_bench["data_root"],
                  config_root=quick_configs, batch_size=8, num_workers=0)
    with oo.enable_cpu_fallback():
        first = Evaluator(net, postprocessor_name="um_msp", **kwargs)
        first.eval_ood(progress=False)
        with pytest.raises(RuntimeError) as caught:  # main skipped the run without a word
            Evaluator(net, postprocessor_name="umap_msp", **kwargs)
        assert isinstance(caught.value, oo.NetworkReuseError)
        one_line(str(caught.value), "copy.deepcopy(net)",
                 prefix="postprocessor 'umap_msp': this network was already fine-tuned by "
                        "postprocessor 'um_msp'")

        # the same postprocessor set up again (APS, re-runs) leaves the network alone
        tuned = {k: v.clone() for k, v in net.state_dict().items()}
        first.postprocessor.setup(net, first.dataloader_dict["id"], first.dataloader_dict["ood"])
        assert all(torch.equal(tuned[k], v) for k, v in net.state_dict().items())

        second = Evaluator(copy.deepcopy(pristine), postprocessor_name="umap_msp", **kwargs)
    assert second.postprocessor.xi is not None and second.postprocessor.mode == "umap"
    zeros = (second.net.state_dict()["fc.weight"] == 0).float().mean().item()
    assert 0.15 < zeros < 0.25  # UMAP really ran on the copy
