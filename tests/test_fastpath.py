"""The fast paths compute the same function as the plain layers: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from cvae_mnist.fastpath import FlattenKeepLayout, label_conv, strided_conv4x4, subpixel_conv_transpose2d
from cvae_mnist.model import CVAE, Conv4x4, ConvTranspose4x4, CVAEConfig

REPORT = CVAEConfig(latent_dim=8, base_channels=4)
WIDER = CVAEConfig(
    latent_dim=6, base_channels=4, conditioning="embedding", embedding_dim=3, normalization="batch",
    residual_blocks=1,
)  # fmt: skip


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


@pytest.mark.parametrize("layer", [Conv4x4(5, 6), ConvTranspose4x4(6, 5)], ids=["conv", "transposed"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gemm_weight_gradient_is_the_layers_gradient(layer, memory_format):
    torch.manual_seed(0)
    size = 14 if isinstance(layer, Conv4x4) else 7
    x = torch.randn(3, layer.in_channels, size, size).contiguous(memory_format=memory_format)
    function = {
        "plain": lambda x, w, b: type(layer).forward(_with(layer, w, b), x),
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
    copy = type(layer)(layer.in_channels, layer.out_channels)
    del copy.weight, copy.bias
    copy.weight, copy.bias = weight, bias
    return copy


@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_weight_gradient_passes_gradcheck(transposed):
    torch.manual_seed(0)
    layer = (ConvTranspose4x4(3, 2) if transposed else Conv4x4(3, 2)).double()
    x = torch.randn(2, 3, 4 if transposed else 8, 4 if transposed else 8, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: strided_conv4x4(x, _with(layer, w, b)), (x, layer.weight, layer.bias)
    )


def test_label_conv_is_the_convolution_of_image_and_label_channels():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1 + 10, 6, 4, stride=2, padding=1)
    x, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 3, 9, 1])
    maps = torch.eye(10)
    expected = conv(torch.cat([x, maps[labels][:, :, None, None].expand(-1, -1, 28, 28)], dim=1))
    (expected * torch.linspace(-1, 1, expected.numel()).view_as(expected)).sum().backward()
    expected_grad, conv.weight.grad = conv.weight.grad, None
    got = label_conv(conv, x, maps, labels)
    (got * torch.linspace(-1, 1, got.numel()).view_as(got)).sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_flatten_keeps_the_gradient_in_the_input_layout(memory_format):
    x = torch.randn(3, 4, 5, 5).contiguous(memory_format=memory_format).requires_grad_(True)
    flat = FlattenKeepLayout()(x)
    assert torch.equal(flat, x.detach().flatten(1))  # channel-major order, as nn.Flatten
    flat.backward(torch.arange(flat.numel(), dtype=torch.float32).view_as(flat))
    assert torch.equal(x.grad, torch.arange(flat.numel(), dtype=torch.float32).view(3, 4, 5, 5))
    assert x.grad.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("config", [REPORT, WIDER], ids=["report", "wider"])
def test_the_fast_model_is_the_plain_model(config):
    torch.manual_seed(0)
    plain = CVAE(config)
    fast = CVAE(config, label_lookup=True, channels_last=True, subpixel_output=True, gemm_weight_grads=True)
    fast.load_state_dict(plain.state_dict())
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 3, 3, 9, 1, 7])
    outputs = {}
    for name, model in (("plain", plain), ("fast", fast)):
        torch.manual_seed(1)  # the same z noise
        images = x.contiguous(memory_format=torch.channels_last) if model.channels_last else x
        logits, mu, logvar = model(images, y)
        (logits.sum() + mu.sum() + logvar.square().sum()).backward()
        outputs[name] = [logits, mu, logvar], {n: p.grad for n, p in model.named_parameters()}
    for got, expected in zip(outputs["fast"][0], outputs["plain"][0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # fp32 sums in another order: compare at the scale of the largest gradient (about 60 here)
    scale = max(g.abs().max().item() for g in outputs["plain"][1].values())
    for name, expected in outputs["plain"][1].items():
        torch.testing.assert_close(outputs["fast"][1][name], expected, rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert fast.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
    strided = [m for m in fast.modules() if isinstance(m, Conv4x4 | ConvTranspose4x4)]
    assert len(strided) == 2 and all(m.gemm_weight_grad for m in strided)  # the fast path ran
    assert set(fast.state_dict()) == set(plain.state_dict())  # same weights, same checkpoints
