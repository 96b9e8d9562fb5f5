"""The embedded benchmark's data: real packaged images, deterministic, disjoint splits."""
import numpy as np
import pytest
from openood_fixtures import need_openood

from benchmarks.embedded import datasets as emb


pytestmark = pytest.mark.usefixtures("bench_extras")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UM_PLUGIN_CACHE", str(tmp_path))


def test_mnist5k_split_is_stratified_disjoint_and_deterministic():
    a, b = emb.load_mnist5k(0), emb.load_mnist5k(0)
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    for split, (x, y) in a.items():
        assert x.shape[1:] == (28, 28, 3) and x.dtype == np.uint8
        assert np.bincount(y).tolist() == [sizes[split] // 10] * 10
        np.testing.assert_array_equal(x, b[split][0])
    rows = {k: {v[0][i, :, :, 0].tobytes() for i in range(len(v[1]))} for k, v in a.items()}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


@pytest.mark.parametrize("build", [
    lambda s: emb.render_letters(12, seed=s), lambda s: emb.load_animal_shapes(12, s),
    lambda s: emb.texture_crops(12, s), lambda s: emb.photo_crops(12, s),
    lambda s: emb.noise_images(12, s)], ids=["letters", "animals", "textures", "photos", "noise"])
def test_ood_builders_are_seeded_rgb_28x28(build):
    a, b, c = build(0), build(0), build(1)
    assert a.shape == (12, 28, 28, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 5  # not blank


def test_validation_ood_shares_no_glyph_or_font_with_the_test_letters():
    assert not set(emb.VAL_LETTERS) & set(emb.TEST_LETTERS)
    test_fonts = {f for v in emb.font_files(emb.TEST_FONT_FAMILIES).values() for f in v}
    val_fonts = {f for v in emb.font_files(emb.VAL_FONT_FAMILIES).values() for f in v}
    assert val_fonts and test_fonts and not val_fonts & test_fonts
    assert len(test_fonts) >= 10  # many faces


def test_build_embedded_caches_and_rejects_unknown_sets(tmp_path):
    d1 = emb.build_embedded(n_ood=16, n_val_ood=8, cache_dir=str(tmp_path))
    d2 = emb.build_embedded(n_ood=16, n_val_ood=8, cache_dir=str(tmp_path))
    assert list(d1.near) == ["letters", "animals"] and list(d1.far) == ["textures", "photos", "noise"]
    for k in d1.ood_sets():
        np.testing.assert_array_equal(d1.ood_sets()[k], d2.ood_sets()[k])
    assert d1.ood_val.shape == (8, 28, 28, 3)
    with pytest.raises(ValueError, match="unknown OOD set.*valid"):
        emb.build_embedded(sets=("letters", "cifar"), cache_dir=str(tmp_path))
    t = emb.to_tensor(d1.ood_val)
    assert t.shape == (8, 3, 28, 28) and float(t.min()) >= -1 and float(t.max()) <= 1


@pytest.mark.slow
def test_openood_layout_round_trips_pixels_and_registers(tmp_path):
    need_openood()
    from PIL import Image
    from benchmarks.embedded.openood_layout import register_embedded
    from um_plugin.openood.registry.datasets import unregister_benchmark
    data = emb.build_embedded(n_ood=6, n_val_ood=4, cache_dir=str(tmp_path / "c"))
    root = str(tmp_path / "oo")
    info = register_embedded(data, root, id_name="mnist5k_test")
    try:
        from openood.evaluation_api.datasets import DATA_INFO
        assert DATA_INFO["mnist5k_test"]["ood"]["near"]["datasets"] == ["letters", "animals"]
        line = open(tmp_path / "oo" / info["ood"]["far"]["photos"]["imglist_path"]).readline()
        name, label = line.split()
        img = np.asarray(Image.open(tmp_path / "oo" / "images_classic" / name).convert("RGB"))
        np.testing.assert_array_equal(img, data.far["photos"][0])
        assert label == "-1"
        register_embedded(data, root, id_name="mnist5k_test")  # reuse of a stamped layout
    finally:
        unregister_benchmark("mnist5k_test")
