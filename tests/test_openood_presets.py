"""The run log names every way a route differs from the authors' setting (issue 26)."""
import pytest


def _diffs(mode="um", batch_size=256, oe_batch_size=None, **args):
    from um_plugin.openood.settings.options import postprocessor_options
    from um_plugin.openood.settings.presets import differences
    return differences(postprocessor_options(args, mode), batch_size, oe_batch_size)


def test_the_shipped_yamls_run_the_authors_setting(oo):
    import yaml

    from um_plugin.openood.settings.options import postprocessor_options
    from um_plugin.openood.settings.presets import differences
    from um_plugin.shipped import configs_root
    for mode in ("um", "umap"):
        with open(f"{configs_root()}/postprocessors/{mode}.yml") as f:
            args = yaml.safe_load(f)["postprocessor"]["postprocessor_args"]
        assert differences(postprocessor_options(args, mode), args["batch_size"]) == []


@pytest.mark.parametrize("args, named", [
    ({"xi_draws": 5}, "xi_draws 5 (authors: 1 random mask)"),
    ({"precision": "bf16"}, "precision 'bf16' (authors: 'fp32')"),
    ({"xi_seed": 3}, "xi_seed 3 (shipped: 0)"),
    ({"seed": 2}, "seed 2 (shipped: 0; the authors' code draws from its global RNG)"),
    ({"fit_check": "warn"}, "fit_check 'warn' with fit_margin 0.1 (shipped: 'stop', 0.1"),
    ({"fit_margin": 0.3}, "fit_check 'stop' with fit_margin 0.3"),
    ({"nesterov": True}, "nesterov True (authors: False)"),
])
def test_each_setting_of_ours_or_theirs_is_named(oo, args, named):
    diffs = _diffs(**args)
    assert len(diffs) == 1 and diffs[0].startswith(named), diffs


def test_umap_scores_drawn_with_xis_seed_and_masked_layers_are_named(oo):
    [same] = _diffs("umap", seed=0)
    assert same.startswith("seed 0 = xi_seed: UMAP's initial scores are the draw of ξ's mask")
    assert _diffs("umap", seed=1) == []
    assert _diffs("umap", seed=1, loss_constraint=0.2) == ["loss_constraint 0.2 (authors: estimated)"]
    [include] = _diffs("umap", seed=1, include=["conv"])
    assert include == "include ['conv'] (authors: every Conv2d/Linear layer masked)"


def test_with_outliers_the_reference_is_their_oe_setting(oo):
    from um_plugin.core import FinetuneConfig
    from um_plugin.openood.settings.options import DataOptions, MethodOptions, XiOptions
    from um_plugin.openood.settings.presets import differences
    oe = FinetuneConfig(epochs=10, lr=0.01, outlier_loss="oe")
    assert differences(MethodOptions(oe, XiOptions()), 256, 256) == []
    changed = FinetuneConfig(epochs=10, lr=0.1, outlier_loss="energy", m_in=-20.0)
    assert differences(MethodOptions(changed, XiOptions(), DataOptions()), 256, 128) == [
        "lr 0.1 (authors: 0.01)", "m_in -20.0 (authors: -25.0)",
        "OE batch_size 128 (authors: 256, batch_size * ood_factor 1)"]
