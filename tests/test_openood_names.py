"""One grammar for our postprocessor names (um_plugin/openood/registry/names.py), used by every lookup."""
import pytest

MESSAGE = "{!r} is not a UM postprocessor name; use one of ('um', 'umap') or '<mode>_<base>'"


@pytest.mark.parametrize("name, parts", [
    ("um", ("um", None)), ("umap", ("umap", None)), ("umap_odin", ("umap", "odin")),
    ("um_ap", ("um", "ap")), ("um_", None), ("umap_", None), ("umapx", False), ("ebo", False),
    (None, False),
])
def test_is_method_name_and_split_name_agree(oo, name, parts):
    from um_plugin.openood.registry.names import is_method_name, split_name
    assert is_method_name(name) is (parts is not False)
    if parts:
        assert split_name(name) == parts
    else:
        with pytest.raises(ValueError, match=MESSAGE.format(name).replace("(", r"\(")
                           .replace(")", r"\)").replace("[", r"\[")):
            split_name(name)


def test_a_name_with_no_base_is_refused_in_our_words_by_every_lookup(oo, tmp_path):
    """'um_' is ours (never handed to OpenOOD, which would try to download um_.yml), and every
    lookup refuses it with the same line."""
    from openood.evaluation_api.postprocessor import get_postprocessor
    from openood.utils.config import Config
    from um_plugin.openood.evaluation.evaluate import check_postprocessor
    from openood.postprocessors.utils import get_postprocessor as pipeline_get_postprocessor
    expected = MESSAGE.format("um_")
    with pytest.raises(ValueError) as evaluator:
        get_postprocessor(str(tmp_path), "um_", "cifar10")
    with pytest.raises(ValueError) as pipeline:
        pipeline_get_postprocessor(Config({"postprocessor": {"name": "um_"}}))
    with pytest.raises(ValueError) as cli:
        check_postprocessor("um_", str(tmp_path))
    for caught in (evaluator, pipeline, cli):
        assert str(caught.value).startswith(expected)
