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
    os.remove(os.path.join(kwargs["data_root"], kwargs["data_dir"], "unitbench2/test/00000.png"))
    with pytest.raises(FileNotFoundError, match=r"id_test: .* names 'unitbench2/test/00000.png'"):
        oo.register_benchmark(**kwargs)
    with pytest.raises(FileNotFoundError, match="benchmark_imglist' does not exist"):
        oo.register_benchmark(**dict(kwargs, data_root=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        oo.register_benchmark(**dict(kwargs, num_classes=0))


def test_dataset_config_names_the_normalization_main_py_knows(oo, tmp_path):
    from um_plugin.openood.registry.datasets import dataset_config, normalization_by_name
    kwargs = make_tiny_benchmark(str(tmp_path), name="normbench")
    ids = {k: kwargs[k] for k in ("num_classes", "id_train", "id_val", "id_test", "data_dir")}
    cifar = normalization_by_name("cifar10")
    section = dataset_config("normbench", kwargs["data_root"], normalization=cifar, **ids)["dataset"]
    assert section["normalization_type"] == "cifar10" and section["image_size"] == 32
    with pytest.raises(ValueError, match=r"normalization .* cannot be written into a dataset YAML"):
        dataset_config("normbench", kwargs["data_root"], normalization=((0.1,) * 3, (0.2,) * 3), **ids)
    with pytest.raises(ValueError, match=r"'nope' is not in OpenOOD's normalization_dict"):
        normalization_by_name("nope")
    with pytest.raises(FileNotFoundError, match=r"id_val: image list .*nope.txt"):
        dataset_config("normbench", kwargs["data_root"], **dict(ids, id_val="nope.txt"))


@pytest.mark.parametrize("split, line, says", [
    ("id_train", "{img}", r"line 2 '.*000.png': no label; each line is '<image> <label>' "
                          r"with an integer label in \[0, 3\)"),
    ("id_val", "{img} 3", r"line 2 .*label 3 is not a class of this benchmark \(num_classes=3\)"),
    ("id_test", "{img} -1", r"line 2 .*label -1 is not a class"),
    ("id_train", "{img} cat", r"line 2 .*label 'cat' is not an integer"),
    ("ood_val", "{img} 7", r"line 2 .*label 7 is not a class.*label < 3 \(-1 for OOD images\)"),
])
def test_refuses_list_lines_without_a_usable_label(oo, tmp_path, split, line, says):
    """Refused when the benchmark is registered, naming the line: OpenOOD would fail much later
    with an IndexError."""
    kwargs = make_tiny_benchmark(str(tmp_path), name="labelbench")
    path = os.path.join(kwargs["data_root"], kwargs[split])
    with open(path) as f:
        lines = f.read().splitlines()
    lines[1] = line.format(img=lines[0].split(" ")[0])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"^" + split + r": '.*" + os.path.basename(path) + "' " + says):
        oo.register_benchmark(**kwargs)
    from openood.evaluation_api import datasets
    assert "labelbench" not in datasets.DATA_INFO


def test_ood_lists_keep_negative_labels(oo, tmp_path):
    kwargs = make_tiny_benchmark(str(tmp_path), name="oodlabels")
    try:
        info = oo.register_benchmark(**kwargs)
        far = info["ood"]["far"]["noise_far"]["imglist_path"]
        assert far == kwargs["far_ood"]["noise_far"]
        with open(os.path.join(kwargs["data_root"], far)) as f:
            assert {line.split()[1] for line in f} == {"-1"}  # every OOD line, and accepted
    finally:
        oo.unregister_benchmark("oodlabels")
