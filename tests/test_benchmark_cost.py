"""The cost benchmark runs and reports consistent figures (timings themselves are not asserted)."""
import pytest

from benchmarks import cost


def test_cost_lenet_tiny(tmp_path):
    r = cost.run(["lenet"], batch=8, steps=1, warmup=0, device="cpu", out=str(tmp_path),
                 progress=False)
    m = r["models"][0]
    assert m["mask_same_as_sort"] is True
    assert m["baked_has_no_parametrizations"] is True
    for key in ("ratio_umap_vs_plain", "ratio_um_vs_plain", "ratio_sort_vs_topk",
                "ratio_baked_vs_base_inference", "xi_images_per_s"):
        assert m[key] > 0
    assert (tmp_path / "cost.json").is_file() and "| lenet | 8 |" in (tmp_path / "cost.md").read_text()


def test_cost_rejects_unknown_model(capsys):
    assert cost.main(["--models", "vgg", "--out", "/tmp"]) == 2
    assert "unknown model(s) ['vgg']" in capsys.readouterr().err
