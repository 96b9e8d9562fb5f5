import pytest
import torch

from um_plugin.core.batches import unpack_batch


def test_tuple_and_dict_batches():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert unpack_batch((x, y))[1] is y
    assert unpack_batch([x, y, "extra"])[0] is x
    assert unpack_batch({"data": x, "label": y, "image_name": ["a", "b"]})[1] is y


def test_dict_missing_keys_names_them():
    with pytest.raises(TypeError, match="label"):
        unpack_batch({"data": torch.zeros(1)})


def test_not_a_batch():
    with pytest.raises(TypeError, match="int"):
        unpack_batch(3)


def test_float_labels_refused():
    with pytest.raises(TypeError, match="dtype"):
        unpack_batch((torch.zeros(2, 3), torch.zeros(2)))
