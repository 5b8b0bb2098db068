"""Kernels behind the memory-efficient and frozen lowerings of :mod:`densegraph.lower.torch`.

Memory-efficient training (Pleiss et al., "Memory-Efficient Implementation of DenseNets", 2017): every node
output that some concatenation reads lives in one preallocated :class:`BlockStore` per concatenation group,
written once at a channel offset. A consumer reads a channel range of that buffer instead of concatenating, and
:class:`PreActConv` runs BN-ReLU-conv over it without keeping the BN-ReLU output: backward recomputes it from
the buffer. A slot's per-channel batch statistics are computed once, when it is written: every BN that reads
the channel would compute the same numbers, so forward never reduces over a prefix again. Gradients of the
buffer are summed into one shared gradient buffer; the autograd edges from the consumers to the producers are
carried by zero-size tokens returned by :class:`StoreSlot`, so autograd still orders every producer's backward
after all of its consumers'.
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

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel batch mean and (biased) variance of the gathered channels."""
        store = self.store
        assert store.mean is not None and store.var is not None
        # copies: later slots write the store's statistics in place, and the mean is saved for backward
        return self.gather(store.mean[None])[0].clone(), self.gather(store.var[None])[0].clone()

    def accumulate(self, grad: torch.Tensor, *, owned: bool = False) -> None:
        """Add ``grad`` (the gradient of :meth:`gather`'s result) into the store's gradient buffer; ``owned``:
        nothing else holds ``grad``, so it may become the buffer."""
        self.store.accumulate(self.ranges, grad, owned=owned)


def _batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W), accumulated in float64 (so E[x^2] - E[x]^2 loses
    nothing that matters); two plain reductions, a few times faster than ``torch.var_mean`` on CPU."""
    count = x.numel() // x.shape[1]
    mean = x.sum((0, 2, 3), dtype=torch.float64) / count
    square = torch.linalg.vector_norm(x, 2, dim=(0, 2, 3), dtype=torch.float64).square() / count
    return mean, (square - mean * mean).clamp_min(0)


class BlockStore:
    """One concatenation group's feature maps: a buffer of ``channels`` written slot by slot (with each
    channel's batch mean and variance when asked: every BN that reads a channel normalizes it by the same
    statistics), and in backward the gradient buffer its consumers add into.

    ``buffer`` is released (set to ``None``) when the forward pass ends; consumers that need it in backward hold
    it as a saved tensor, so it is freed as soon as the last of them has run.
    """

    def __init__(self, channels: int, slots: int, memory_format: torch.memory_format) -> None:
        self.channels = channels
        self.slots = slots
        self.memory_format = memory_format
        self.buffer: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None
        self._task = -1
        self._pending = 0
        self._scratch: dict[str, torch.Tensor] = {}

    def write(self, offset: int, value: torch.Tensor, *, statistics: bool = False) -> None:
        if self.buffer is None:
            n, _, h, w = value.shape
            self.buffer = torch.empty(
                (n, self.channels, h, w),
                dtype=value.dtype,
                device=value.device,
                memory_format=self.memory_format,
            )
        self.buffer[:, offset : offset + value.shape[1]].copy_(value)
        if statistics:
            if self.mean is None or self.var is None:
                self.mean, self.var = value.new_empty(self.channels), value.new_empty(self.channels)
            mean, var = _batch_statistics(value)
            self.mean[offset : offset + value.shape[1]] = mean
            self.var[offset : offset + value.shape[1]] = var

    def scratch(self, name: str, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of ``shape`` (at most the buffer's size; ``like`` is a tensor of that size) in
        memory that every consumer of this store reuses: fresh allocations this large cost more in page faults
        than the kernels that fill them."""
        buffer = self._scratch.get(name)
        if buffer is None:
            buffer = self._scratch[name] = like.new_empty(like.numel())
        return buffer[: shape.numel()].view(shape)

    def release_scratch(self) -> None:
        self._scratch.clear()

    def accumulate(self, ranges: tuple[tuple[int, int], ...], grad: torch.Tensor, *, owned: bool) -> None:
        """Add ``grad`` into the gradient buffer at ``ranges``, starting a fresh buffer for each backward pass."""
        task = _graph_task_id()
        if self._grad is None or task != self._task:
            self._task, self._pending = task, self.slots
            if ranges == ((0, self.channels),):  # the widest consumer runs backward first: no zeros, no add
                self._grad = grad if owned else grad.clone()
                return
            n, _, h, w = grad.shape
            self._grad = grad.new_zeros((n, self.channels, h, w))
        offset = 0
        for start, stop in ranges:
            self._grad[:, start:stop] += grad[:, offset : offset + stop - start]
            offset += stop - start

    def take_grad(self, offset: int, channels: int) -> torch.Tensor | None:
        """The summed gradient of one slot (every consumer of it has run); frees the buffer after the last."""
        grad = self._grad
        if grad is None or self._task != _graph_task_id():
            return None
        self._pending -= 1
        if self._pending == 0:
            self._grad = None
            self._scratch.clear()
        return grad[:, offset : offset + channels]


class StoreSlot(torch.autograd.Function):
    """Write ``value`` (and its channels' batch statistics) into ``store`` at ``offset``; return a zero-size token
    that stands for it in autograd."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, store: BlockStore, offset: int) -> torch.Tensor:
        store.write(offset, value, statistics=True)
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


def _bn_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(batch_norm(x))`` from given statistics, as one affine pass and an in-place ReLU (into ``out``)."""
    shape = (1, -1, 1, 1)
    scale = weight * invstd
    return torch.addcmul((bias - mean * scale).view(shape), x, scale.view(shape), out=out).relu_()


class PreActConv(torch.autograd.Function):
    """``conv(relu(batch_norm(x)))`` — or ``conv(avg_pool(relu(batch_norm(x))))`` with ``pool`` = (kernel,
    stride) — that keeps neither the BN nor the ReLU output for backward.

    ``x`` is either a tensor (saved as usual) or ``None`` with ``read`` a :class:`BufferRead`: then the buffer is
    saved, the gathered input never copied in forward, and BN uses the statistics stored with the slots. The
    running averages are updated once, in forward; backward recomputes ``relu(batch_norm(x))`` from the saved
    batch statistics.
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
        if x is not None:
            saved, source = x, x
        else:
            assert read is not None and read.store.buffer is not None
            saved = (
                read.store.buffer.data
            )  # a version counter of its own: later slot writes touch other channels
            source = read.gather(saved)
        count = source.numel() // source.shape[1]
        if training and count < 2:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {source.shape}"
            )
        if not training:
            assert running_mean is not None and running_var is not None
            mean, invstd = running_mean.clone(), (running_var + eps).rsqrt()
            y = _bn_relu(source, bn_weight, bn_bias, mean, invstd)
        elif read is None:
            y, mean, invstd = _aten.native_batch_norm(
                source, bn_weight, bn_bias, running_mean, running_var, True, momentum, eps
            )
            y = y.relu_()
        else:
            mean, var = read.statistics()
            if running_mean is not None and running_var is not None:
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * (count / (count - 1)), alpha=momentum)
            invstd = (var + eps).rsqrt()
            out = read.store.scratch("y", source.shape, saved)
            y = _bn_relu(source, bn_weight, bn_bias, mean, invstd, out)
        if pool is not None:
            y = F.avg_pool2d(y, pool[0], pool[1])
        out = F.conv2d(y, conv_weight, conv_bias, stride, padding)
        ctx.save_for_backward(saved, bn_weight, bn_bias, mean, invstd, conv_weight)
        ctx.read, ctx.training, ctx.eps, ctx.pool = read, training, eps, pool
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, conv_bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, bn_weight, bn_bias, mean, invstd, conv_weight = ctx.saved_tensors
        read: BufferRead | None = ctx.read
        # a contiguous copy: BN's backward kernel runs twice as fast on it as on a strided view (CPU)
        if read is None:
            x, y_out = saved, None
        else:
            view = read.gather(saved)
            x = read.store.scratch("x", view.shape, saved).copy_(view)
            y_out = read.store.scratch("y", view.shape, saved)
        pool, needs = ctx.pool, ctx.needs_input_grad
        y = _bn_relu(x, bn_weight, bn_bias, mean, invstd, y_out)
        conv_input = F.avg_pool2d(y, pool[0], pool[1]) if pool is not None else y
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
        # ReLU's backward, written over grad_input: a fresh tensor of this size costs more in page faults than
        # the kernel itself
        grad_y = _aten.threshold_backward.grad_input(grad_input, y, 0, grad_input=grad_input)
        del y, grad_input
        need_x = read is not None or needs[0]
        if ctx.training:
            grad_x, grad_bn_weight, grad_bn_bias = _aten.native_batch_norm_backward(
                grad_y, x, bn_weight, None, None, mean, invstd, True, ctx.eps, [need_x, needs[2], needs[3]]
            )
        else:  # BN in eval is the per-channel affine map scale * x + shift
            dims, shape = (0, 2, 3), (1, -1, 1, 1)
            grad_x = grad_y * (bn_weight * invstd).view(shape) if need_x else None
            grad_bn_weight = (grad_y * (x - mean.view(shape))).sum(dims) * invstd if needs[2] else None
            grad_bn_bias = grad_y.sum(dims) if needs[3] else None
        if read is not None:
            read.accumulate(grad_x, owned=True)
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
    return bool(
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


def pack_conv_weight(weight: torch.Tensor, stride: int, padding: int, input_shape: list[int]) -> torch.Tensor:
    """``weight`` reordered once into oneDNN's blocked layout for inputs of ``input_shape`` (any shape still works)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]  # the stub lacks input_size
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
