"""Faster forms of the CVAE's layers on the CPU, each computing the same function as the plain
layer, swapped in for training only where measured to pay (docs/performance.md). No Kedro here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cvae_mnist.core.model import ConditionedConv2d


class LabelLookupConv2d(ConditionedConv2d):
    """The conditioned convolution, its label channels' share computed once per batch.

    A convolution is linear in its input channels, and each label channel is a constant
    map: convolve the image channel alone, then add ``label @ table``, where the table
    holds each label channel's response to a map of ones (one GEMM, whose backward is a
    GEMM too, instead of a convolution over ``e`` more input channels).
    """

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        e = label.shape[1]
        ones = torch.eye(e, device=x.device)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        per_channel = F.conv2d(ones, self.weight[:, 1:], None, self.stride, self.padding)
        h = F.conv2d(x, self.weight[:, :1], self.bias, self.stride, self.padding)
        n, c, height, width = h.shape
        # rows laid out channels-last (H, W, C), so that h's rows are a view, not a copy
        table = per_channel.permute(0, 2, 3, 1).flatten(1).to(h.dtype)
        out = torch.addmm(h.permute(0, 2, 3, 1).reshape(n, -1), label.to(h.dtype), table)
        return out.view(n, height, width, c).permute(0, 3, 1, 2)


class GemmConv4x4(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return strided_conv4x4(x, self)


class GemmConvTranspose4x4(nn.ConvTranspose2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return strided_conv4x4(x, self)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subpixel_conv_transpose2d(x, self.weight, self.bias)


class FlattenKeepLayout(nn.Flatten):
    """``nn.Flatten()`` whose gradient returns in the input's memory layout.

    A plain flatten of a channels-last tensor sends its gradient back channel-major, and
    the ReLU before it then mixes two layouts, which takes torch's slow strided path
    (about 20x slower than matching layouts, measured on [128, 32, 14, 14]).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FlattenKeepLayout.apply(x)


class UnflattenChannelsLast(nn.Unflatten):
    """``nn.Unflatten`` whose feature maps are channels-last, the layout of every layer after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous(memory_format=torch.channels_last)


def _strided_4x4(layer: nn.Conv2d | nn.ConvTranspose2d) -> bool:
    return (
        layer.kernel_size == (4, 4) and layer.stride == (2, 2) and layer.padding == (1, 1)
        and layer.dilation == (1, 1) and layer.groups == 1 and layer.output_padding == (0, 0)
    )  # fmt: skip


def fast_form(layer: nn.Module) -> type[nn.Module] | None:
    """The faster class of ``layer``, or None where it has none."""
    kind = type(layer)
    if kind is ConditionedConv2d:
        return LabelLookupConv2d
    if kind is nn.Conv2d and _strided_4x4(layer):
        return GemmConv4x4
    if kind is nn.ConvTranspose2d and _strided_4x4(layer):
        # oneDNN's transposed convolution is slow with one output channel
        return SubpixelConvTranspose2d if layer.out_channels == 1 else GemmConvTranspose4x4
    return {nn.Flatten: FlattenKeepLayout, nn.Unflatten: UnflattenChannelsLast}.get(kind)


@contextmanager
def accelerated(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes with the fast forms, in the channels-last layout,
    when ``device`` is the CPU; elsewhere it is left as it is."""
    if device.type != "cpu":
        yield model
        return
    swapped = [(layer, type(layer)) for layer in model.modules() if fast_form(layer) is not None]
    if not swapped:  # no layer of a known form, or already inside an accelerated block
        yield model
        return
    for layer, _ in swapped:
        layer.__class__ = fast_form(layer)  # the same parameters and state, another forward
    # new parameter tensors in the other layout: never inference tensors, even when entered
    # under torch.inference_mode, so that the model can be trained or updated afterwards
    with torch.inference_mode(False):
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for layer, plain in swapped:
            layer.__class__ = plain
        with torch.inference_mode(False):
            model.to(memory_format=torch.contiguous_format)


class _FlattenKeepLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x.contiguous().flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.reshape(ctx.shape)
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad


# For output parity p (even/odd row), a stride-2, padding-1, 4x4 transposed convolution
# takes input offsets {-1, 0} with kernel taps {3, 1} (p = 0) and {0, +1} with {2, 0} (p = 1).
_TAPS = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}


def _subpixel_index() -> torch.Tensor:
    index = torch.full((2, 2, 3, 3), 16)  # 16 = a zero tap
    for p, rows in _TAPS.items():
        for q, cols in _TAPS.items():
            for di, kh in rows.items():
                for dj, kw in cols.items():
                    index[p, q, di + 1, dj + 1] = 4 * kh + kw
    return index.flatten()


_SUBPIXEL_INDEX = _subpixel_index()


def _windows(x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The 4x4 windows, stride 2, padding 1, of ``x`` ``[N, C, H, W]``: ``[N * oh * ow, 16 * C]``,
    ordered (kh, kw, c) — channels-last, so each window row is one contiguous run."""
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # NHWC
    n, c = padded.shape[0], padded.shape[3]
    s = padded.stride()
    oh, ow = out_size
    windows = padded.as_strided((n, oh, ow, 4, 4 * c), (s[0], 2 * s[1], 2 * s[2], s[1], 1))
    return windows.reshape(n * oh * ow, 16 * c)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` as ``[N * H * W, C]`` (a view when ``t`` is channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _window_weight_grad(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """``sum`` over images and pixels of ``small``'s pixel times ``large``'s 4x4 window, as one
    matrix product: the weight gradient ``[C_small, C_large, 4, 4]`` of a 4x4, stride-2,
    padding-1 layer between them (conv: small = output gradient; transposed: small = input)."""
    products = _rows(small).t() @ _windows(large, small.shape[-2:])  # [C_small, (kh, kw, C_large)]
    return products.view(small.shape[1], 4, 4, large.shape[1]).permute(0, 3, 1, 2)


class _SubpixelConvTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = weight.to(x.dtype)  # under autocast x is already bf16
        c_in, c_out = w.shape[:2]
        taps = torch.cat([w.reshape(c_in, c_out, 16), w.new_zeros(c_in, c_out, 1)], dim=2)
        subpixel = taps[:, :, _SUBPIXEL_INDEX.to(w.device)].view(c_in, 4 * c_out, 3, 3).transpose(0, 1)
        b = bias.to(x.dtype).repeat_interleave(4) if bias is not None else None
        ctx.save_for_backward(x, w)
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return F.pixel_shuffle(F.conv2d(x, subpixel, b, padding=1), 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)
        # each input pixel's 4x4 window of the output gradient, times the kernel
        weights = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # [c_in, (kh, kw, c_out)]
        grad_x = _windows(grad, x.shape[-2:]) @ weights.t()
        grad_x = grad_x.view(x.shape[0], *x.shape[2:], x.shape[1]).permute(0, 3, 1, 2)
        grad_w = _window_weight_grad(x, grad).to(ctx.dtypes[0])
        grad_b = None if ctx.dtypes[1] is None else grad.sum((0, 2, 3)).to(ctx.dtypes[1])
        return grad_x, grad_w, grad_b


def subpixel_conv_transpose2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=1)`` for 4x4 kernels, in the
    input's dtype, computed without oneDNN's transposed convolution, which is slow on CPUs
    with one output channel (the decoder's last layer).

    Forward: a 3x3 convolution with four outputs per channel (one per output-pixel parity)
    and a pixel shuffle (Shi et al. 2016). Backward: two small matrix products with the
    4x4 windows of the output gradient, gathered by strides.
    """
    return _SubpixelConvTranspose.apply(x, weight, bias)


class _StridedConv4x4(torch.autograd.Function):
    """A 4x4, stride-2, padding-1 convolution (or transposed convolution) whose weight
    gradient is one matrix product over the 4x4 windows of the larger feature map."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool
    ) -> torch.Tensor:
        w = weight.to(x.dtype)  # under autocast x is already bf16
        b = None if bias is None else bias.to(x.dtype)
        conv = F.conv_transpose2d if transposed else F.conv2d
        out = conv(x, w, b, stride=2, padding=1)
        ctx.save_for_backward(x, w)
        ctx.transposed, ctx.dtypes = transposed, (weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None]:
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, w, None, [2, 2], [1, 1], [1, 1], ctx.transposed, [0, 0], 1, [True, False, False]
        )[0]
        small, large = (x, grad) if ctx.transposed else (grad, x)
        grad_w = _window_weight_grad(small, large).to(ctx.dtypes[0])
        grad_b = None if ctx.dtypes[1] is None else grad.sum((0, 2, 3)).to(ctx.dtypes[1])
        return grad_x, grad_w, grad_b, None


def strided_conv4x4(x: torch.Tensor, layer: nn.Conv2d | nn.ConvTranspose2d) -> torch.Tensor:
    """``layer(x)`` for a 4x4, stride-2, padding-1 (transposed) convolution, its weight gradient
    computed as one matrix product over the larger map's 4x4 windows: oneDNN's bf16
    weight-gradient kernels for these layers run at about half the rate of its forward
    kernels on the CPUs measured (docs/performance.md), the matrix product near full rate."""
    return _StridedConv4x4.apply(x, layer.weight, layer.bias, isinstance(layer, nn.ConvTranspose2d))
