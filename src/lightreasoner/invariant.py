"""Row-invariant products and reductions: a row's result never depends on how many rows share the call.

A kernel may pick its blocking, and so a row's rounding, by the shape of the whole call. Measured on this
project's CPUs (issue 14, ``benchmarks/RESULTS.md``):

- ``linear``: in bf16 any row count >= 2 gives a row the same bits (one row takes another kernel); in float32
  (MKL) the kernel changes with the row count from 4 rows on.
- Row reductions (RMSNorm's ``mean``, sums over the vocabulary): a row's bits do not depend on the row count.

On an H200 decoding was not batch-invariant (the GPU check); CUDA's reductions split a row across threads and
blocks by the row count, and cuBLAS picks kernels by shape, so there every such call gets one shape (whether
that suffices is for the GPU check's ``invariance`` part to show).

So, inside ``with RowInvariant():``, ``linear`` runs in calls of a fixed shape (:func:`tile_rows`) and, where
:func:`reduction_tile` > 0, so does a ``mean`` over the last dimension; :func:`by_row_tiles` does the same for
any row-wise function (the scoring statistics, the text path's amateur distribution), and
:func:`deterministic_scatter` makes an ``index_add_`` add in a fixed order there.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F


def tile_rows(device: torch.device, dtype: torch.dtype) -> int:
    """Rows per product for ``linear``: 0 = native (bf16 on CPU: any count >= 2 gives the same bits), else a tile."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return 0
    return 16 if device.type == "cpu" else 64


def reduction_tile(device: torch.device) -> int:
    """Rows per call of a row reduction (RMSNorm's mean, the decoding attention, the scoring statistics): 0 = native
    (on CPU a row's reduction gives the same bits for any row count, tested), else a fixed tile (on CUDA the
    kernel's split of a row follows the row count)."""
    return 0 if device.type == "cpu" else 64


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` whose result for a row does not depend on how many rows come with it (see module doc)."""
    rows = x.reshape(-1, x.shape[-1])
    tile = tile_rows(x.device, x.dtype)
    if tile == 0:
        if rows.shape[0] >= 2:
            return F.linear(x, weight, bias)
        out = F.linear(rows.expand(2, -1), weight, bias)[:1]
    else:
        out = rowwise(lambda r: F.linear(r, weight, bias), rows, tile=tile)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def invariant_mean(x: torch.Tensor, dim: Any = None, keepdim: bool = False, **kwargs: Any) -> torch.Tensor:
    """``torch.mean``; over the last dimension in row tiles where :func:`reduction_tile` asks for them."""
    tile = reduction_tile(x.device)
    last = dim in (-1, x.dim() - 1, [-1], (-1,), [x.dim() - 1], (x.dim() - 1,))
    if tile == 0 or not last or x.dim() < 2 or kwargs:
        return torch.mean(x, **({} if dim is None else {"dim": dim, "keepdim": keepdim}), **kwargs)
    out = rowwise(lambda r: r.mean(-1, keepdim=True), x.reshape(-1, x.shape[-1]), tile=tile)
    return out.reshape(*x.shape[:-1], 1) if keepdim else out.reshape(x.shape[:-1])


def by_row_tiles(fn: Any, *xs: torch.Tensor, tile: int | None = None) -> list[tuple[int, Any]]:
    """``fn`` over ``xs`` (same row count) in calls of exactly ``tile`` rows (default :func:`reduction_tile`), the
    last padded with copies of its last row: ``[(real rows, fn(*tile)), ...]``. One call, unpadded, for a tile of
    0 (the device's row reductions are invariant: CPU)."""
    tile = reduction_tile(xs[0].device) if tile is None else tile
    m = xs[0].shape[0]
    if tile == 0:
        return [(m, fn(*xs))]
    out = []
    for i in range(0, m, tile):
        if i + tile <= m:  # a whole tile: views
            out.append((tile, fn(*(x[i:i + tile] for x in xs))))
        else:
            rows = torch.arange(i, i + tile, device=xs[0].device).clamp(max=m - 1)
            out.append((m - i, fn(*(x[rows] for x in xs))))
    return out


def rowwise(fn: Any, *xs: torch.Tensor, tile: int | None = None) -> Any:
    """``fn`` over the rows of ``xs`` as :func:`by_row_tiles` calls it, its outputs (a tensor, or a tuple of
    tensors, rows first) put back together: ``[M, ...]`` for ``M`` rows in."""
    parts = by_row_tiles(fn, *xs, tile=tile)

    def join(outs: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        return outs[0][1][:outs[0][0]] if len(outs) == 1 else torch.cat([out[:m] for m, out in outs])

    if isinstance(parts[0][1], tuple):
        return tuple(join([(m, out[i]) for m, out in parts]) for i in range(len(parts[0][1])))
    return join(parts)


@contextlib.contextmanager
def deterministic_scatter(device: torch.device) -> Iterator[None]:
    """Torch's deterministic algorithms on, where :func:`reduction_tile` > 0: CUDA's ``index_add_`` otherwise adds
    with atomics, in another order from run to run (the CPU's adds in index order)."""
    if reduction_tile(device) == 0:
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


class RowInvariant(torch.overrides.TorchFunctionMode):
    """Inside ``with RowInvariant():`` every ``F.linear`` (models, PEFT adapters, output layers) is
    :func:`invariant_linear`, every ``mean`` :func:`invariant_mean`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:  # (the mode is off inside its own handler: no recursion)
            return invariant_linear(*args, **kwargs)
        if func is torch.mean or func is torch.Tensor.mean:
            return invariant_mean(*args, **kwargs)
        return func(*args, **kwargs)
