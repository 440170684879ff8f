"""The fast forms compute the same function as the plain layers: values and gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvae_mnist.core.fastpath import (
    FlattenKeepLayout,
    GemmConv4x4,
    GemmConvTranspose4x4,
    LabelLookupConv2d,
    SubpixelConvTranspose2d,
    UnflattenChannelsLast,
    accelerated,
    strided_conv4x4,
    subpixel_conv_transpose2d,
)
from cvae_mnist.core.model import CVAE, ConditionedConv2d
from cvae_mnist.params import ModelParams, PriorParams

SMALL = {"latent_dim": 6, "base_channels": 4}
CONFIGS = {
    "two_stage, report's layers": ModelParams(**SMALL, conditioning="one_hot", normalization="none", residual_blocks=0),
    "two_stage, default layers": ModelParams(**SMALL, embedding_dim=3),
    "report": ModelParams(**SMALL, architecture="report", conditioning="one_hot", normalization="none", residual_blocks=0),
    "report, default layers": ModelParams(**SMALL, architecture="report", embedding_dim=3),
}  # fmt: skip


def _grads(function, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = function(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))  # a gradient that is not uniform
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("c_out", [1, 3])
def test_subpixel_conv_transpose_is_the_transposed_convolution(c_out):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 7, 7), torch.randn(5, c_out, 4, 4), torch.randn(c_out)
    expected, expected_grads = _grads(lambda *a: F.conv_transpose2d(*a, stride=2, padding=1), x, weight, bias)
    got, got_grads = _grads(subpixel_conv_transpose2d, x, weight, bias)
    assert got.shape == (2, c_out, 14, 14)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_conv_transpose_gradients_pass_gradcheck(bias):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    inputs = [
        t.requires_grad_(True)
        for t in (x, weight, torch.randn(2, dtype=torch.float64) if bias else None)
        if t is not None
    ]
    assert torch.autograd.gradcheck(
        lambda *a: subpixel_conv_transpose2d(*a, *([] if bias else [None])), inputs
    )


def _conv(transposed: bool, c_in: int, c_out: int) -> nn.Module:
    return (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, 4, stride=2, padding=1)


@pytest.mark.parametrize(
    ("transposed", "size"),
    [(False, 14), (False, 7), (True, 7), (True, 3)],
    ids=["14to7", "7to3", "7to14", "3to6"],
)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gemm_weight_gradient_is_the_layers_gradient(transposed, size, memory_format):
    torch.manual_seed(0)
    layer = _conv(transposed, 5, 6)
    x = torch.randn(3, layer.in_channels, size, size).contiguous(memory_format=memory_format)
    function = {
        "plain": lambda x, w, b: _with(layer, w, b)(x),
        "gemm": lambda x, w, b: strided_conv4x4(x, _with(layer, w, b)),
    }
    (expected, expected_grads), (got, got_grads) = (
        _grads(function[k], x, layer.weight, layer.bias) for k in function
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


def _with(layer, weight, bias):
    """A copy of ``layer`` whose weight and bias are the given tensors (to differentiate through them)."""
    twin = copy.deepcopy(layer)
    del twin.weight, twin.bias
    twin.weight, twin.bias = weight, bias
    return twin


@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_weight_gradient_passes_gradcheck(transposed):
    torch.manual_seed(0)
    layer = _conv(transposed, 3, 2).double()
    x = torch.randn(2, 3, 4 if transposed else 8, 4 if transposed else 8, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: strided_conv4x4(x, _with(layer, w, b)), (x, layer.weight, layer.bias)
    )


@pytest.mark.parametrize("label_kind", ["one_hot", "embedding"])
def test_the_label_lookup_is_the_conditioned_convolution(label_kind):
    torch.manual_seed(0)
    conv = ConditionedConv2d(1 + 10, 6, 4, stride=2, padding=1)
    x, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 3, 9, 1])
    label = torch.eye(10)[labels] if label_kind == "one_hot" else torch.randn(5, 10)
    fast = copy.deepcopy(conv)
    fast.__class__ = LabelLookupConv2d
    expected, expected_grads = _grads(conv, x, label)
    got, got_grads = _grads(fast, x, label)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_flatten_keeps_the_gradient_in_the_input_layout(memory_format):
    x = torch.randn(3, 4, 5, 5).contiguous(memory_format=memory_format).requires_grad_(True)
    flat = FlattenKeepLayout()(x)
    assert torch.equal(flat, x.detach().flatten(1))  # channel-major order, as nn.Flatten
    flat.backward(torch.arange(flat.numel(), dtype=torch.float32).view_as(flat))
    assert torch.equal(x.grad, torch.arange(flat.numel(), dtype=torch.float32).view(3, 4, 5, 5))
    assert x.grad.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_accelerated_model_is_the_plain_model(config):
    torch.manual_seed(0)
    plain = CVAE(config)
    fast = copy.deepcopy(plain)
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 3, 3, 9, 1, 7])
    outputs = {}
    with accelerated(fast, torch.device("cpu")):
        for name, model in (("plain", plain), ("fast", fast)):
            torch.manual_seed(1)  # the same z noise
            logits, mu, logvar = model(x, y)
            (logits.sum() + mu.sum() + logvar.square().sum()).backward()
            outputs[name] = [logits, mu, logvar], {n: p.grad for n, p in model.named_parameters()}
        forms = {type(m) for m in fast.modules()}
        assert {LabelLookupConv2d, SubpixelConvTranspose2d, FlattenKeepLayout, UnflattenChannelsLast} <= forms
        assert {GemmConv4x4, GemmConvTranspose4x4} <= forms  # every architecture has inner 4x4 layers
        assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for got, expected in zip(outputs["fast"][0], outputs["plain"][0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # fp32 sums in another order: compare at the scale of the largest gradient
    scale = max(g.abs().max().item() for g in outputs["plain"][1].values())
    for name, expected in outputs["plain"][1].items():
        torch.testing.assert_close(outputs["fast"][1][name], expected, rtol=1e-4, atol=1e-5 * scale, msg=name)
    # after the block: the plain classes and layout again, the same parameters
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]
    assert fast.conv1.weight.is_contiguous() and set(fast.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_nothing_is_swapped_on_devices_where_it_was_not_measured(device):
    model = CVAE(CONFIGS["report"])
    before = [type(m) for m in model.modules()]
    with accelerated(model, torch.device(device)):  # only the device's type is read
        assert [type(m) for m in model.modules()] == before


def test_inference_uses_the_fast_forms_and_leaves_a_model_that_can_still_be_trained():
    from cvae_mnist.core.inference import reconstruct  # noqa: PLC0415

    model = CVAE(ModelParams(latent_dim=4, base_channels=4), PriorParams(kind="mixture"))
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6)
    with torch.no_grad():
        plain = model.eval().decode(model.encode(images, labels)[0], labels)
    forms = []  # the class each call of the first convolution ran as
    model.conv1.register_forward_hook(lambda layer, *_: forms.append(type(layer).__name__))
    torch.testing.assert_close(reconstruct(model, images, labels, 4, torch.device("cpu")), plain)
    assert forms == ["LabelLookupConv2d", "LabelLookupConv2d"]  # two batches of 4, the fast form
    # the layers are the plain ones again, their tensors ordinary (not inference) tensors
    assert type(model.conv1) is ConditionedConv2d
    assert not any(t.is_inference() for t in [*model.parameters(), *model.buffers()])
    model.prior.mean[0] = 1.0  # the prior is fitted in place after evaluation-style encoding
    model.train()(images, labels)[0].sum().backward()
