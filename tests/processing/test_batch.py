"""BatchFeature: attribute access, tensor conversion and .to(), checked against transformers' BatchFeature."""

import pickle

import numpy as np
import pytest
import torch
import transformers

from llavakit import BatchFeature
from llavakit.processing.batch import BatchEncoding


def _data():
    return {"input_ids": [[1, 2, 3], [4, 5, 6]], "attention_mask": [[1, 1, 1], [0, 1, 1]],
            "pixel_values": [np.ones((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.float32)]}


def test_attribute_access_and_missing_key():
    batch = BatchFeature({"input_ids": [1, 2]})
    assert batch.input_ids == [1, 2] and batch["input_ids"] == [1, 2]
    with pytest.raises(AttributeError, match="no key 'pixel_values'"):
        batch.pixel_values


@pytest.mark.parametrize("tensor_type", ["pt", "np"])
def test_convert_matches_transformers(tensor_type):
    ours = BatchFeature(_data(), tensor_type=tensor_type)
    ref = transformers.BatchFeature(_data(), tensor_type=tensor_type)
    for key in ref:
        assert type(ours[key]) is type(ref[key])
        assert ours[key].dtype == ref[key].dtype and tuple(ours[key].shape) == tuple(ref[key].shape)
        assert np.array_equal(np.asarray(ours[key]), np.asarray(ref[key]))


def test_none_keeps_lists_and_strings_are_left_alone():
    batch = BatchFeature({"input_ids": [[1, 2]], "text": ["a", "b"]}, tensor_type=None)
    assert batch["input_ids"] == [[1, 2]]
    batch.convert_to_tensors("pt")
    assert isinstance(batch["input_ids"], torch.Tensor) and batch["text"] == ["a", "b"]


def test_list_of_tensors_is_stacked():
    batch = BatchFeature({"pixel_values": [torch.ones(3, 2, 2), torch.zeros(3, 2, 2)]}, tensor_type="pt")
    assert batch["pixel_values"].shape == (2, 3, 2, 2)


def test_ragged_rows_give_a_clear_error():
    with pytest.raises(ValueError, match=r"different lengths \[3, 1\].*padding=True"):
        BatchFeature({"input_ids": [[1, 2, 3], [4]]}, tensor_type="pt")


def test_bad_tensor_type():
    with pytest.raises(ValueError, match="'pt', 'np' or None"):
        BatchFeature({"input_ids": [1]}, tensor_type="tf")


def test_to_dtype_casts_only_floating_tensors_like_transformers():
    ours = BatchFeature(_data(), tensor_type="pt").to(torch.float16)
    ref = transformers.BatchFeature(_data(), tensor_type="pt").to(torch.float16)
    for key in ref:
        assert ours[key].dtype == ref[key].dtype
    assert ours["input_ids"].dtype == torch.int64 and ours["pixel_values"].dtype == torch.float16


def test_to_device_and_bad_argument():
    batch = BatchFeature(_data(), tensor_type="pt").to("cpu")
    assert batch["input_ids"].device.type == "cpu" and batch["pixel_values"].dtype == torch.float32
    batch = BatchFeature(_data(), tensor_type="pt").to(device="cpu", dtype=torch.bfloat16)
    assert batch["pixel_values"].dtype == torch.bfloat16 and batch["attention_mask"].dtype == torch.int64
    with pytest.raises(ValueError, match="device or a torch.dtype"):
        batch.to(3.5)


def test_pickle_round_trip():
    batch = pickle.loads(pickle.dumps(BatchFeature(_data(), tensor_type="pt")))
    assert isinstance(batch, BatchFeature) and batch.input_ids.shape == (2, 3)
    encoding = pickle.loads(pickle.dumps(BatchEncoding({"input_ids": [1]}, encodings=None)))
    assert encoding.encodings is None and encoding.input_ids == [1]


def test_batch_encoding_tokens_needs_encodings():
    with pytest.raises(ValueError, match="needs the encodings"):
        BatchEncoding({"input_ids": [1]}).tokens()
