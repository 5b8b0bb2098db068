"""Kernels behind the memory-efficient and frozen lowerings of :mod:`densegraph.lower.torch`.

Memory-efficient training (Pleiss et al., "Memory-Efficient Implementation of DenseNets", 2017): every node
output that some concatenation reads lives in one preallocated :class:`BlockStore` per concatenation group,
written once at a channel offset. A consumer reads a channel range of that buffer instead of concatenating, and
:class:`PreActConv` runs BN-ReLU-conv over it without keeping the BN-ReLU output: backward recomputes it from
the buffer. Gradients of the buffer are summed into one shared gradient buffer; the autograd edges from the
consumers to the producers are carried by zero-size tokens returned by :class:`StoreSlot`, so autograd still
orders every producer's backward after all of its consumers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BlockStore",
    "StoreSlot",
    "GatherSlots",
    "PreActConv",
    "bn_momentum",
    "conv_pointwise",
    "mkldnn_conv_available",
    "pack_conv_weight",
]

_aten = torch.ops.aten


def _graph_task_id() -> int:
    # Identifies one backward pass, so that a graph run backward twice (retain_graph=True, gradcheck) sums each
    # pass's gradients into a fresh buffer.
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current() if current is not None else 0


@dataclass(frozen=True)
class BufferRead:
    """A consumer's input: the channel ``ranges`` (start, stop) of ``store``'s buffer, concatenated in order."""

    store: BlockStore
    ranges: tuple[tuple[int, int], ...]

    def gather(self, buffer: torch.Tensor) -> torch.Tensor:
        """A view of ``buffer`` when the ranges are one run, else their concatenation."""
        views = [buffer[:, start:stop] for start, stop in self.ranges]
        return views[0] if len(views) == 1 else torch.cat(views, 1)

    def accumulate(self, grad: torch.Tensor) -> None:
        """Add ``grad`` (the gradient of :meth:`gather`'s result) into the store's gradient buffer."""
        target = self.store.grad_buffer(grad)
        offset = 0
        for start, stop in self.ranges:
            target[:, start:stop] += grad[:, offset : offset + stop - start]
            offset += stop - start


class BlockStore:
    """One concatenation group's feature maps: a buffer of ``channels`` written slot by slot, and in backward
    the gradient buffer its consumers add into.

    ``buffer`` is released (set to ``None``) when the forward pass ends; consumers that need it in backward hold
    it as a saved tensor, so it is freed as soon as the last of them has run.
    """

    def __init__(self, channels: int, slots: int, memory_format: torch.memory_format) -> None:
        self.channels = channels
        self.slots = slots
        self.memory_format = memory_format
        self.buffer: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None
        self._task = -1
        self._pending = 0

    def allocate(self, like: torch.Tensor) -> torch.Tensor:
        n, _, h, w = like.shape
        self.buffer = torch.empty(
            (n, self.channels, h, w), dtype=like.dtype, device=like.device, memory_format=self.memory_format
        )
        return self.buffer

    def write(self, offset: int, value: torch.Tensor) -> None:
        buffer = self.buffer if self.buffer is not None else self.allocate(value)
        buffer[:, offset : offset + value.shape[1]].copy_(value)

    def grad_buffer(self, like: torch.Tensor) -> torch.Tensor:
        task = _graph_task_id()
        if self._grad is None or task != self._task:
            n, _, h, w = like.shape
            self._grad = like.new_zeros((n, self.channels, h, w))
            self._task, self._pending = task, self.slots
        return self._grad

    def take_grad(self, offset: int, channels: int) -> torch.Tensor | None:
        """The summed gradient of one slot (every consumer of it has run); frees the buffer after the last."""
        grad = self._grad
        if grad is None or self._task != _graph_task_id():
            return None
        self._pending -= 1
        if self._pending == 0:
            self._grad = None
        return grad[:, offset : offset + channels]


class StoreSlot(torch.autograd.Function):
    """Write ``value`` into ``store`` at ``offset``; return a zero-size token that stands for it in autograd."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, store: BlockStore, offset: int) -> torch.Tensor:
        store.write(offset, value)
        ctx.store, ctx.offset, ctx.channels = store, offset, value.shape[1]
        return value.new_empty((0,))

    @staticmethod
    def backward(ctx: Any, _token_grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        return ctx.store.take_grad(ctx.offset, ctx.channels), None, None


class GatherSlots(torch.autograd.Function):
    """Materialise a :class:`BufferRead` as an ordinary tensor (for consumers that do not start with BN-ReLU-conv)."""

    @staticmethod
    def forward(ctx: Any, read: BufferRead, *tokens: torch.Tensor) -> torch.Tensor:
        ctx.read = read
        assert read.store.buffer is not None
        return read.gather(read.store.buffer).clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        ctx.read.accumulate(grad)
        return (None,) * len(ctx.needs_input_grad)


def bn_momentum(bn: torch.nn.BatchNorm2d) -> float:
    """The running-average factor ``bn`` uses in this forward pass, counting the batch as ``nn.BatchNorm2d`` does."""
    if not (bn.training and bn.track_running_stats and bn.num_batches_tracked is not None):
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class PreActConv(torch.autograd.Function):
    """``conv(relu(batch_norm(x)))`` — or ``conv(avg_pool(relu(batch_norm(x))))`` with ``pool`` = (kernel,
    stride) — that keeps neither the BN nor the ReLU output for backward.

    ``x`` is either a tensor (saved as usual) or ``None`` with ``read`` a :class:`BufferRead` (the buffer is
    saved, the gathered input is not). BN statistics and the running averages are computed once, in forward;
    backward recomputes ``relu(batch_norm(x))`` from the saved batch statistics.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor | None,
        read: BufferRead | None,
        bn_weight: torch.Tensor,
        bn_bias: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        conv_weight: torch.Tensor,
        conv_bias: torch.Tensor | None,
        stride: int,
        padding: int,
        pool: tuple[int, int] | None,
        *tokens: torch.Tensor,
    ) -> torch.Tensor:
        if x is None:
            assert read is not None and read.store.buffer is not None
            buffer = (
                read.store.buffer.data
            )  # a version counter of its own: later slot writes touch other channels
            source = read.gather(buffer)
        else:
            buffer, source = x, x
        y, mean, spread = _aten.native_batch_norm(
            source, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps
        )
        if not training:  # saved for backward: the running statistics as they were in forward
            assert running_mean is not None and running_var is not None
            mean, spread = running_mean.clone(), running_var.clone()
        y = y.relu_()
        if pool is not None:
            y = F.avg_pool2d(y, pool[0], pool[1])
        out = F.conv2d(y, conv_weight, conv_bias, stride, padding)
        ctx.save_for_backward(buffer, bn_weight, bn_bias, mean, spread, conv_weight)
        ctx.read, ctx.training, ctx.eps, ctx.pool = read, training, eps, pool
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, conv_bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        buffer, bn_weight, bn_bias, mean, spread, conv_weight = ctx.saved_tensors
        read: BufferRead | None = ctx.read
        x = read.gather(buffer) if read is not None else buffer
        training, pool = ctx.training, ctx.pool
        invstd = (
            spread if training else (spread + ctx.eps).rsqrt()
        )  # spread: invstd in training, else variance
        shape = (1, -1, 1, 1)
        scale = bn_weight * invstd
        y = torch.addcmul((bn_bias - mean * scale).view(shape), x, scale.view(shape)).relu_()
        conv_input = F.avg_pool2d(y, pool[0], pool[1]) if pool is not None else y
        needs = ctx.needs_input_grad
        grad_input, grad_conv_weight, grad_conv_bias = _aten.convolution_backward(
            grad_out,
            conv_input,
            conv_weight,
            [conv_weight.shape[0]] if ctx.has_bias else None,
            [ctx.stride] * 2,
            [ctx.padding] * 2,
            [1, 1],
            False,
            [0, 0],
            1,
            [True, needs[9], ctx.has_bias and needs[10]],
        )
        del conv_input
        if pool is not None:
            grad_input = _aten.avg_pool2d_backward(
                grad_input, y, [pool[0]] * 2, [pool[1]] * 2, [0, 0], False, True, None
            )
        grad_y = _aten.threshold_backward(grad_input, y, 0)
        del y, grad_input
        grad_x, grad_bn_weight, grad_bn_bias = _aten.native_batch_norm_backward(
            grad_y,
            x,
            bn_weight,
            None if training else mean,
            None if training else spread,
            mean if training else None,
            invstd if training else None,
            training,
            ctx.eps,
            [read is not None or needs[0], needs[2], needs[3]],
        )
        if read is not None:
            read.accumulate(grad_x)
            grad_x = None
        return (
            grad_x,
            None,
            grad_bn_weight,
            grad_bn_bias,
            None,
            None,
            None,
            None,
            None,
            grad_conv_weight,
            grad_conv_bias,
            None,
            None,
            None,
            *([None] * (len(needs) - 14)),
        )


# --------------------------------------------------------------------------------------------------------------
# Frozen inference: oneDNN convolutions with prepacked weights and fused post-ops.


def mkldnn_conv_available() -> bool:
    """Whether oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``) can be used here."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


def pack_conv_weight(weight: torch.Tensor, stride: int, padding: int, input_shape: list[int]) -> torch.Tensor:
    """``weight`` reordered once into oneDNN's blocked layout for inputs of ``input_shape`` (any shape still works)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), [padding] * 2, [stride] * 2, [1, 1], 1, input_shape
    )


def conv_pointwise(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    post: str | None,
) -> torch.Tensor:
    """oneDNN convolution with a prepacked weight and an optional fused ``relu`` post-op."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, [padding] * 2, [stride] * 2, [1, 1], 1, post or "none", [], ""
    )
