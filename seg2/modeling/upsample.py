"""Upsampling ops behind one registry, so every semantic head can swap them by name.

All ops share one constructor, ``op(channels, scale=2, **op_kwargs)``, and one call,
``op(x, output_size=None, indices=None)``. Without ``output_size`` every op returns the
*natural* size ``in * scale`` in which input pixel ``i`` maps onto output block
``[i * scale, (i + 1) * scale)``, so a head can upsample and crop the bottom/right excess
to a finer feature map (the geometry of Detectron2's stride-``s`` convolutions, whose
output pixel ``j`` sits at input pixel ``s * j``).

============  ===================================================  ======================
name          what it does                                          reachable output_size
============  ===================================================  ======================
nearest       each input pixel fills its block                      any
bed_of_nails  value at the block's top-left pixel, zeros elsewhere  (in-1)*s < out <= in*s
max_unpool    value at the position remembered by the paired        (in-1)*s < out <= in*s
              :class:`MaxPoolWithSwitches` (the switches)
bilinear      bilinear interpolation, explicit ``align_corners``    any
transposed    learned transposed convolution (optionally           natural .. natural+s-1
              initialised to bilinear interpolation, FCN paper)
============  ===================================================  ======================
"""

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

__all__ = [
    "UPSAMPLE_REGISTRY",
    "build_upsample",
    "upsample_names",
    "UpsampleOp",
    "NearestUpsample",
    "BedOfNailsUpsample",
    "MaxUnpoolUpsample",
    "BilinearUpsample",
    "TransposedUpsample",
    "MaxPoolWithSwitches",
    "transposed_output_padding",
    "bilinear_kernel",
]

UPSAMPLE_REGISTRY = Registry("UPSAMPLE")
UPSAMPLE_REGISTRY.__doc__ = """
Registry for upsampling ops, keyed by class name (fvcore's public ``register``). Each class
also carries ``registered_name``, the lowercase name ``MODEL.SEG2.UPSAMPLE.NAME`` uses
(``nearest``, ``bed_of_nails``, ``max_unpool``, ``bilinear``, ``transposed``); either
name builds it.

The registered class is constructed as ``op = cls(channels: int, scale: int = 2,
**op_kwargs)`` and called as ``y = op(x, output_size=None, indices=None)`` with
    x (Tensor): (N, channels, H, W).
    output_size (tuple[int, int] or None): requested (H', W'); None = (H * scale, W * scale).
    indices (Tensor or None): (N, channels, H, W) max-pooling switches, only for max_unpool.
returning y (Tensor): (N, channels, H', W').
Ops whose ``needs_indices`` attribute is True can only follow a :class:`MaxPoolWithSwitches`.
"""

Size2 = Tuple[int, int]


def _register(name: str):
    """Register the class (under its class name) and give it its lowercase config name."""

    def deco(cls):
        cls.registered_name = name
        UPSAMPLE_REGISTRY.register(cls)
        return cls

    return deco


def upsample_names() -> Dict[str, type]:
    """Config name -> op class, for every registered op."""
    return {getattr(cls, "registered_name", "") or key: cls for key, cls in UPSAMPLE_REGISTRY}


def _pair(v: Union[int, Sequence[int]]) -> Size2:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class UpsampleOp(nn.Module):
    """Base of every registered op: stores ``channels``/``scale`` and resolves the size."""

    needs_indices: bool = False
    registered_name: str = ""

    def __init__(self, channels: int, scale: int = 2):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"{type(self).__name__}: scale must be a positive int, got {scale}")
        self.channels = int(channels)
        self.scale = int(scale)

    def natural_size(self, x: torch.Tensor) -> Size2:
        """Output (H, W) when no ``output_size`` is given: ``(H * scale, W * scale)``."""
        return (x.shape[-2] * self.scale, x.shape[-1] * self.scale)

    def _size(self, x: torch.Tensor, output_size: Optional[Sequence[int]]) -> Size2:
        if output_size is None:
            return self.natural_size(x)
        return _pair(tuple(output_size)[-2:])

    def _check_block_size(self, x: torch.Tensor, size: Size2) -> None:
        """Ops that place one value per block can only drop part of the last block."""
        for dim, (n_in, n_out) in zip("HW", zip(x.shape[-2:], size)):
            lo, hi = (n_in - 1) * self.scale + 1, n_in * self.scale
            if not lo <= n_out <= hi:
                raise ValueError(
                    f"{self.registered_name}: output_size {dim}={n_out} is unreachable from "
                    f"input {dim}={n_in} at scale {self.scale}; it must lie in [{lo}, {hi}]"
                )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale}"


@_register("nearest")
class NearestUpsample(UpsampleOp):
    """Nearest neighbour: each input pixel fills its ``scale x scale`` block (sizes up to one
    block short are cropped at the bottom/right); sizes outside that range use
    ``F.interpolate(mode="nearest")``'s rule ``src = floor(dst * in / out)``."""

    def forward(
        self,
        x: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        size = self._size(x, output_size)
        s = self.scale
        in_blocks = all((n - 1) * s < m <= n * s for n, m in zip(x.shape[-2:], size))
        if not in_blocks:
            return F.interpolate(x, size=size, mode="nearest")
        out = x.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
        return out[..., : size[0], : size[1]]


@_register("bed_of_nails")
class BedOfNailsUpsample(UpsampleOp):
    """Copies each value to the top-left pixel of its output block, zeros elsewhere."""

    def forward(
        self,
        x: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        size = self._size(x, output_size)
        self._check_block_size(x, size)
        s = self.scale
        out = x.new_zeros(x.shape[:-2] + (x.shape[-2] * s, x.shape[-1] * s))
        out[..., ::s, ::s] = x
        return out[..., : size[0], : size[1]]


@_register("max_unpool")
class MaxUnpoolUpsample(UpsampleOp):
    """Puts each value where the paired :class:`MaxPoolWithSwitches` found its maximum
    (the switches), zeros elsewhere; ``output_size`` should be the pooled input's size."""

    needs_indices = True

    def forward(
        self,
        x: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if indices is None:
            raise ValueError(
                "max_unpool needs the switches (indices=) of the paired MaxPoolWithSwitches"
            )
        if indices.shape != x.shape:
            raise ValueError(
                f"max_unpool: indices shape {tuple(indices.shape)} != input shape "
                f"{tuple(x.shape)}"
            )
        size = self._size(x, output_size)
        self._check_block_size(x, size)
        s = self.scale
        return F.max_unpool2d(x, indices, kernel_size=s, stride=s, output_size=size)


@_register("bilinear")
class BilinearUpsample(UpsampleOp):
    """Bilinear interpolation. ``align_corners=False`` (default) treats pixels as squares
    (torch's default, and the FCN paper's kernel); True maps corner centres onto each other.
    """

    def __init__(self, channels: int, scale: int = 2, *, align_corners: bool = False):
        super().__init__(channels, scale)
        self.align_corners = bool(align_corners)

    def forward(
        self,
        x: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        size = self._size(x, output_size)
        if size == self.natural_size(x):
            # scale_factor (not size) so the sampling grid is exactly i -> (i + .5)/s - .5.
            return F.interpolate(
                x, scale_factor=self.scale, mode="bilinear", align_corners=self.align_corners
            )
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", align_corners={self.align_corners}"


def transposed_output_padding(
    in_size: int, out_size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1
) -> int:
    """
    The ``output_padding`` a transposed convolution needs to produce ``out_size``.

    ``ConvTranspose2d`` maps a size ``in`` to
    ``out = (in - 1) * s - 2 * p + d * (k - 1) + 1 + output_padding`` (with ``d = 1``:
    ``(in - 1) * s - 2 * p + k + output_padding``), and torch requires
    ``0 <= output_padding < s``, so only ``stride`` consecutive sizes are reachable.

    Args:
        in_size, out_size: input and requested output length along one dimension.
        kernel_size, stride, padding, dilation: the transposed convolution's parameters.

    Returns:
        output_padding in ``[0, stride)``.

    Raises:
        ValueError: if ``out_size`` is not reachable.
    """
    base = (in_size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + 1
    output_padding = out_size - base
    if not 0 <= output_padding < stride:
        raise ValueError(
            f"transposed upsampling: output size {out_size} is unreachable from input size "
            f"{in_size} with kernel {kernel_size}, stride {stride}, padding {padding}: "
            f"(in-1)*s - 2p + k + output_padding reaches only [{base}, {base + stride - 1}]"
        )
    return output_padding


def bilinear_kernel(size: int) -> torch.Tensor:
    """
    The 2-D bilinear interpolation kernel of the FCN paper (``upsample_filt`` in the FCN
    code): a transposed convolution with it, stride ``f`` and ``kernel = 2f - f % 2``,
    ``padding = f // 2``, equals bilinear interpolation with ``align_corners=False``.

    Returns:
        (size, size) float tensor.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


@_register("transposed")
class TransposedUpsample(UpsampleOp):
    """
    A learned ``channels -> channels`` transposed convolution. The defaults
    ``kernel_size = 2 * scale - scale % 2`` and ``padding = scale // 2`` make the natural
    output exactly ``in * scale``; any ``output_size`` within ``stride`` pixels above it is
    reached through ``output_padding`` (:func:`transposed_output_padding`).

    With ``bilinear_init`` each output channel starts as bilinear interpolation of the same
    input channel (FCN paper). It then equals ``F.interpolate(mode="bilinear",
    align_corners=False)`` except on the outer ``scale // 2`` rows/columns: there
    interpolation clamps to the edge pixel, while the convolution sees zeros beyond it.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        *,
        kernel_size: Optional[int] = None,
        padding: Optional[int] = None,
        bilinear_init: bool = True,
        bias: bool = False,
    ):
        super().__init__(channels, scale)
        self.kernel_size = int(kernel_size) if kernel_size is not None else 2 * scale - scale % 2
        self.padding = int(padding) if padding is not None else scale // 2
        self.weight = nn.Parameter(
            torch.empty(channels, channels, self.kernel_size, self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        if bilinear_init:
            with torch.no_grad():
                self.weight.zero_()
                kernel = bilinear_kernel(self.kernel_size)
                for c in range(channels):
                    self.weight[c, c] = kernel
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def natural_size(self, x: torch.Tensor) -> Size2:
        k, s, p = self.kernel_size, self.scale, self.padding
        return tuple((n - 1) * s - 2 * p + k for n in x.shape[-2:])

    def forward(
        self,
        x: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
        indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        size = self._size(x, output_size)
        output_padding = tuple(
            transposed_output_padding(n_in, n_out, self.kernel_size, self.scale, self.padding)
            for n_in, n_out in zip(x.shape[-2:], size)
        )
        return F.conv_transpose2d(
            x,
            self.weight,
            self.bias,
            stride=self.scale,
            padding=self.padding,
            output_padding=output_padding,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_size={self.kernel_size}, padding={self.padding}"


class MaxPoolWithSwitches(nn.Module):
    """
    Max pooling that also returns where each maximum came from (the "switches"), to be
    handed to the ``max_unpool`` op. ``ceil_mode=True`` so odd sizes keep their last
    row/column, and the pooled size is ``ceil(H / stride)``.

    Returns:
        (values, indices): both (N, C, H', W'); indices index the flattened (H, W) input.
    """

    def __init__(self, kernel_size: int = 2, stride: Optional[int] = None, ceil_mode: bool = True):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride) if stride is not None else self.kernel_size
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            ceil_mode=self.ceil_mode,
            return_indices=True,
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, ceil_mode={self.ceil_mode}"


def build_upsample(
    cfg_or_name: Union[CfgNode, str], channels: int, scale: int = 2, **op_kwargs
) -> UpsampleOp:
    """
    Build an upsampling op.

    Args:
        cfg_or_name: a config (reads ``MODEL.SEG2.UPSAMPLE.NAME``, and ``ALIGN_CORNERS`` for
            bilinear or ``BILINEAR_INIT`` for transposed) or a registered name.
        channels: channels of the tensors it will upsample.
        scale: integer upsampling factor.
        op_kwargs: op-specific arguments; override those read from the config.

    Returns:
        the op, see ``UPSAMPLE_REGISTRY.__doc__``.
    """
    if isinstance(cfg_or_name, str):
        name = cfg_or_name
    else:
        up = cfg_or_name.MODEL.SEG2.UPSAMPLE
        name = up.NAME
        defaults = {"bilinear": {"align_corners": up.ALIGN_CORNERS}}
        defaults["transposed"] = {"bilinear_init": up.BILINEAR_INIT}
        op_kwargs = {**defaults.get(name, {}), **op_kwargs}
    ops = upsample_names()
    if name in UPSAMPLE_REGISTRY:  # the class name works too
        name = getattr(UPSAMPLE_REGISTRY.get(name), "registered_name", name)
    if name not in ops:
        raise KeyError(
            f"MODEL.SEG2.UPSAMPLE.NAME: unknown upsampling op {name!r}; registered: {sorted(ops)}"
        )
    return ops[name](channels, scale, **op_kwargs)
