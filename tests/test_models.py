import numpy as np
import pytest
import torch

from fedguard.models import (arrays_from_flat, arrays_to_model, build_model, flat_from_arrays,
                             model_to_arrays)


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("mlp", (64,)), ("cnn", (1, 28, 28)),
                                         ("cnn_bn", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_output_shape(name, shape):
    model = build_model(name, shape, 10).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_arrays_round_trip_excludes_integer_buffers():
    model = build_model("resnet18", (3, 32, 32), 10)
    arrays = model_to_arrays(model)
    assert not any("num_batches_tracked" in k for k in arrays.keys())
    assert any("running_mean" in k for k in arrays.keys())
    other = build_model("resnet18", (3, 32, 32), 10)
    arrays_to_model(other, arrays)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_flat_round_trip():
    arrays = model_to_arrays(build_model("cnn", (1, 28, 28), 10))
    flat = flat_from_arrays(arrays)
    assert flat.numel() == sum(a.numpy().size for a in arrays.values())
    back = arrays_from_flat(flat, arrays)
    assert list(back.keys()) == list(arrays.keys())
    assert all(np.array_equal(back[k].numpy(), arrays[k].numpy()) for k in arrays.keys())


def test_cnn_rejects_vector_inputs():
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", (64,), 10)


def test_cnn_bn_is_the_cnn_with_batchnorm_after_each_convolution():
    plain, bn = build_model("cnn", (1, 8, 8), 10), build_model("cnn_bn", (1, 8, 8), 10)
    convs = [type(m).__name__ for m in bn.features]
    assert convs[:2] == ["Conv2d", "BatchNorm2d"] and convs[4:6] == ["Conv2d", "BatchNorm2d"]
    shapes = lambda m: [p.shape for n, p in m.named_parameters() if "features" not in n or p.dim() == 4]  # noqa: E731
    assert shapes(plain) == shapes(bn)  # same convolutions and head
    assert any("running_var" in k for k in model_to_arrays(bn).keys())  # BN statistics are exchanged
