"""No silent download: with the plug-in imported, OpenOOD's Evaluator (Route 2, eval_ood.py) and
``um-openood eval`` stop before fetching absent data, in one line naming every folder to fill,
unless UM_PLUGIN_ALLOW_DOWNLOAD=1; ``register_benchmark`` never lets it fetch. Offline: the
downloader fails the test if it is called without the opt-in."""
import os
import shutil
import urllib.request

import pytest
import torch

from bench_helpers import one_line_error, raises_one_line
from openood_fixtures import lenet, make_openood_layout, make_tiny_benchmark

STOCK = ("cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "places365")


class Fetched(Exception):
    """Raised by the stand-in downloader: OpenOOD reached it."""


@pytest.fixture
def fetches(monkeypatch):
    """Every download OpenOOD tries (gdown, urllib), recorded and stopped."""
    import gdown
    calls = []

    def fetch(*args, **kwargs):
        calls.append(kwargs.get("output", args[:1]))
        raise Fetched(f"download of {calls[-1]!r}")
    monkeypatch.setattr(gdown, "download", fetch)
    monkeypatch.setattr(urllib.request, "urlretrieve", fetch)
    monkeypatch.delenv("UM_PLUGIN_ALLOW_DOWNLOAD", raising=False)
    return calls


def _route2(checkout, data_root):
    from openood.evaluation_api import Evaluator
    return Evaluator(lenet(num_classes=10), id_name="cifar10", data_root=str(data_root),
                     config_root=os.path.join(checkout, "configs"),
                     postprocessor_name="umap_ebo", num_workers=0)


def test_route2_names_every_folder_it_would_download_and_fetches_nothing(oo, checkout, tmp_path,
                                                                        fetches):
    message = raises_one_line(lambda: _route2(checkout, tmp_path), "UM_PLUGIN_ALLOW_DOWNLOAD=1",
                              errors=FileNotFoundError)
    assert os.path.join(str(tmp_path), "benchmark_imglist") in message
    for dataset in STOCK:
        assert os.path.join(str(tmp_path), "images_classic", dataset) in message
    assert fetches == [] and os.listdir(tmp_path) == []  # not even an empty folder made


def test_only_the_missing_or_empty_folder_is_named(oo, checkout, tmp_path, fetches):
    make_openood_layout(str(tmp_path), "cifar10", per_list=2)
    shutil.rmtree(tmp_path / "images_classic" / "tin")
    (tmp_path / "images_classic" / "tin").mkdir()  # empty: OpenOOD would download it
    with pytest.raises(FileNotFoundError) as refused:
        _route2(checkout, tmp_path)
    message = str(refused.value)
    assert os.path.join(str(tmp_path), "images_classic", "tin") in message
    assert "benchmark_imglist," not in message and "cifar100" not in message
    assert fetches == []


def test_the_opt_in_lets_openood_download(oo, checkout, tmp_path, fetches, monkeypatch):
    monkeypatch.setenv("UM_PLUGIN_ALLOW_DOWNLOAD", "1")
    with pytest.raises(Fetched):
        _route2(checkout, tmp_path)
    assert fetches == [str(tmp_path) + "/"]  # OpenOOD's own first fetch: benchmark_imglist


def test_um_openood_eval_refuses_an_empty_data_root(oo, checkout, tmp_path, fetches, capsys):
    from um_plugin.cli import main
    (tmp_path / "run" / "s0").mkdir(parents=True)
    torch.save(lenet(num_classes=10).state_dict(), tmp_path / "run" / "s0" / "best.ckpt")
    assert main(["eval", "--cpu", "--id-data", "cifar10", "--data-root", str(tmp_path / "data"),
                 "--network", "lenet", "--root", str(tmp_path / "run"), "--postprocessor", "msp",
                 "--config-root", os.path.join(checkout, "configs"), "--num-workers", "0"]) == 2
    one_line_error(capsys, "um-openood", "nothing is downloaded", str(tmp_path / "data"))
    assert fetches == []


def test_register_benchmark_refuses_a_root_without_image_lists(oo, tmp_path, fetches):
    kwargs = make_tiny_benchmark(str(tmp_path / "data"), name="fetchbench")
    shutil.rmtree(tmp_path / "data" / "benchmark_imglist")
    with pytest.raises(FileNotFoundError) as refused:
        oo.register_benchmark(**kwargs)
    assert os.path.join(str(tmp_path / "data"), "benchmark_imglist") in str(refused.value)
    assert fetches == []
