"""register_benchmark: checked offline benchmarks in the Evaluator's three dicts."""
import os

import pytest

from openood_fixtures import make_tiny_benchmark


def test_registers_all_three_dicts(oo, tmp_path):
    from openood.evaluation_api import datasets, preprocessor
    kwargs = make_tiny_benchmark(str(tmp_path), name="unitbench")
    info = oo.register_benchmark(**kwargs)
    try:
        assert datasets.DATA_INFO["unitbench"] is info and info["num_classes"] == 3
        assert datasets.benchmarks_dict["unitbench"] == []  # nothing for data_setup to fetch
        assert preprocessor.default_preprocessing_dict["unitbench"]["img_size"] == 28
        assert info["ood"]["near"]["datasets"] == ["noise_near"]
        oo.register_benchmark(**kwargs)  # ours: re-registering is fine
    finally:
        oo.unregister_benchmark("unitbench")
    assert "unitbench" not in datasets.DATA_INFO


def test_refuses_missing_files_and_openood_names(oo, tmp_path):
    kwargs = make_tiny_benchmark(str(tmp_path), name="unitbench2")
    with pytest.raises(ValueError, match="already an OpenOOD benchmark"):
        oo.register_benchmark(**dict(kwargs, name="cifar10"))
    with pytest.raises(FileNotFoundError, match=r"near_ood\['x'\]: image list .*nope.txt"):
        oo.register_benchmark(**dict(kwargs, near_ood={"x": "benchmark_imglist/nope.txt"}))
    os.remove(os.path.join(kwargs["data_root"], kwargs["data_dir"], "unitbench2/test/000.png"))
    with pytest.raises(FileNotFoundError, match=r"id_test: .* names 'unitbench2/test/000.png'"):
        oo.register_benchmark(**kwargs)
    with pytest.raises(FileNotFoundError, match="benchmark_imglist' does not exist"):
        oo.register_benchmark(**dict(kwargs, data_root=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        oo.register_benchmark(**dict(kwargs, num_classes=0))
