"""Faster ways to compute four of the CVAE's layers, each the same function as the plain layer.

Training uses them when the matching speed levers are on (``training.label_lookup``,
``training.channels_last``, ``training.subpixel_output``, ``training.gemm_weight_grads``); tests/test_fastpath.py checks
each one, values and gradients, against the plain layer. No Kedro here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def label_conv(
    conv: nn.Conv2d, x: torch.Tensor, label_maps: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``conv(cat([x, label channels]))``, with the label channels' response computed once per class.

    A convolution is linear in its input channels, and the label channels take only
    ``num_classes`` values: convolve the image channel alone, then add each image's row
    of a per-class table of the label channels' response.

    Args:
        conv: The first convolution; its input channels are ``[image, label...]``.
        x: Images, ``[N, 1, H, W]``.
        label_maps: Each class's label vector, ``[num_classes, e]``.
        labels: Class of each image, ``[N]``.
    """
    k = len(label_maps)
    per_class = F.conv2d(
        label_maps[:, :, None, None].expand(-1, -1, *x.shape[-2:]),
        conv.weight[:, 1:],
        None,
        conv.stride,
        conv.padding,
    )
    h = F.conv2d(x, conv.weight[:, :1], conv.bias, conv.stride, conv.padding)
    n, c, height, width = h.shape
    # rows laid out channels-last (H, W, C); one-hot @ table picks each image's row and
    # addmm adds it in the same GEMM (its backward is a GEMM too, not a scatter)
    table = per_class.permute(0, 2, 3, 1).flatten(1).to(h.dtype)
    hwc = h.permute(0, 2, 3, 1).reshape(n, -1)
    out = torch.addmm(hwc, F.one_hot(labels, k).to(h.dtype), table)
    return out.view(n, height, width, c).permute(0, 3, 1, 2)


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


class FlattenKeepLayout(nn.Module):
    """``nn.Flatten()`` of ``[N, C, H, W]`` (channel-major order) whose gradient returns in the input's memory layout.

    A plain flatten of a channels-last tensor sends its gradient back channel-major, and
    the ReLU before it then mixes two layouts, which takes torch's slow strided path
    (about 20x slower than matching layouts, measured on [128, 32, 14, 14]).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FlattenKeepLayout.apply(x)


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
    computed as one matrix product over the larger map's 4x4 windows. oneDNN's bf16
    weight-gradient kernels for these layers ran about half as fast as the forward kernels
    here, and twice as slow again when the host placed our two CPUs apart (see the README's
    Performance section); the matrix product held up much better."""
    return _StridedConv4x4.apply(x, layer.weight, layer.bias, isinstance(layer, nn.ConvTranspose2d))
