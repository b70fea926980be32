"""The loss of search and retraining: the Jaccard distance (1 - soft IoU), as in the paper.

Two choices where the paper is silent (docs/training.md, "Soft Jaccard", has the measurements):

* **Whose batch.** The per-class sums run over the whole batch and every voxel (a "batch" IoU, as nnU-Net's
  batch Dice), and with ``reduce_over_ranks=True`` over the *global* batch of every ``torchrun`` process: the
  sums are added over the ranks by a differentiable all_reduce, so the loss and, after the usual averaging of
  gradients over the ranks, the gradients are those of one process on the whole batch, whatever the number
  of processes.
* **A class absent from the (global) batch.** Its IoU is 0/0. A smoothing term ``s`` in the numerator and
  denominator makes it ``s / (s + sum p)``: about 1 for any prediction whose probabilities add up to more than
  ``s`` (with ``s = 1e-5`` and millions of voxels: always), so the loss is ~1 whether or not the network
  predicts the class, and its gradient (``s / (sum p)^2``, ~1e-13) does nothing against false positives. Such a
  class is scored instead by the Jaccard distance of the complements, which is defined: the reference "not k"
  is every voxel, the prediction "not k" is ``1 - p_k``, and ``1 - sum(1 - p_k) / V = sum p_k / V``, the soft
  false-positive rate. It is 0 for no false positive and 1 for a confident "k" everywhere, linear in every
  voxel's probability, so that each false positive is pushed down by ``1 / V`` however many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _SumOverRanks(torch.autograd.Function):
    """``sum_r x_r`` on every rank, differentiable.

    Every rank computes the same loss ``L(S)`` of the summed statistics ``S = sum_r s_r``, so the gradient that
    arrives here, ``dL/dS``, is the same on every rank; the gradient of ``L`` with respect to this rank's
    ``s_r`` is the sum of what all ranks' losses send back, ``N dL/dS`` (an all_reduce of the upstream
    gradients). DDP (or the search's own averaging) then divides the parameter gradients summed over the ranks
    by ``N``: ``(1/N) sum_r N dL/dS ds_r/dtheta = dL/dtheta``, the one-process gradient on the global batch.
    Passing the gradient through unchanged would give ``1/N`` of it.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                      smooth: float = 1e-5, reduce_over_ranks: bool = False) -> torch.Tensor:
    """The mean over the foreground classes (class 0 excluded unless asked) of each class's Jaccard distance.

    ``logits``: ``(B, K, *S)`` class scores; ``target``: ``(B, *S)`` integer labels in ``0..K-1``. With
    ``p = softmax(logits)``, ``g`` the one-hot target and sums over the batch and every voxel (``V`` voxels):

    * a class present in the batch (``sum g_k > 0``): ``1 - (sum p g + s) / (sum (p + g - p g) + s)``,
      the paper's Jaccard distance (``s = smooth`` only keeps the division safe);
    * a class absent from it: ``sum p_k / V``, the Jaccard distance of the complements (the soft
      false-positive rate; see the module's docstring).

    ``reduce_over_ranks=True``: the sums (and ``V``) are taken over the global batch of all ``torchrun``
    processes, so that the same global batch gives the same loss and, with gradients averaged over the ranks
    (DDP), the same gradients on 1 or N processes. Every rank must then call this at the same point (it is a
    collective); without an initialised process group, or with one process, it changes nothing. Computed in
    float32 even under mixed precision. Returns a scalar.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    # built in the probabilities' float dtype: F.one_hot's int64 tensor would take twice their memory
    one_hot = torch.zeros_like(probs).scatter_(1, target.long().unsqueeze(1), 1.0)
    first = 0 if include_background or num_classes == 1 else 1
    probs, one_hot = probs[:, first:], one_hot[:, first:]
    dims = [0] + list(range(2, probs.dim()))
    classes = probs.shape[1]
    voxels = probs.new_full((1,), float(one_hot[:, 0].numel()))
    # one flat vector, so that one all_reduce carries every statistic
    stats = torch.cat([(probs * one_hot).sum(dims), probs.sum(dims), one_hot.sum(dims), voxels])
    if reduce_over_ranks and _several_ranks():
        stats = _SumOverRanks.apply(stats)
    intersection, predicted, reference = stats[:classes], stats[classes:2 * classes], stats[2 * classes:3 * classes]
    present = reference > 0
    union = predicted + reference - intersection
    # an absent class's union is replaced by 1 so that its unused branch stays finite (no NaN in its gradient)
    jaccard = 1.0 - (intersection + smooth) / torch.where(present, union + smooth, torch.ones_like(union))
    false_positive_rate = predicted / stats[-1]
    return torch.where(present, jaccard, false_positive_rate).mean()


def deep_supervision_weights(levels: Sequence[int]) -> list[float]:
    """nnU-Net's weights of the outputs at level 0 and ``levels``: ``2**-level``, normalised to sum to one
    (nnU-Net halves the weight per output and gives the coarsest output 0; scnas builds no head there)."""
    raw = [0.5 ** level for level in (0, *levels)]
    total = sum(raw)
    return [w / total for w in raw]


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, levels: Sequence[int],
                          **kwargs: Any) -> torch.Tensor:
    """The weighted sum of :func:`soft_jaccard_loss` over a network's outputs ``[logits, logits at levels[0],
    ...]``; the target ``(B, *S)`` is brought to each output's size by nearest-neighbour sampling
    (``nearest-exact``: voxel centres, as nnU-Net's down-sampling of the segmentation). ``kwargs`` go to
    :func:`soft_jaccard_loss` (e.g. ``reduce_over_ranks``)."""
    weights = deep_supervision_weights(levels)
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs for deep supervision at levels 0, {tuple(levels)}")
    total = torch.zeros((), device=outputs[0].device)
    for out, weight in zip(outputs, weights, strict=True):
        small = target
        if tuple(out.shape[2:]) != tuple(target.shape[1:]):
            small = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest-exact")[:, 0].long()
        total = total + weight * soft_jaccard_loss(out, small, **kwargs)
    return total
