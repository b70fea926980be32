"""The loss of search and retraining: the Jaccard distance (1 - soft IoU), as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False,
                      smooth: float = 1e-5) -> torch.Tensor:
    """``1 - mean_k soft IoU_k`` over the foreground classes (class 0 excluded unless asked).

    ``logits``: ``(B, K, *S)`` class scores; ``target``: ``(B, *S)`` integer labels in ``0..K-1``. With
    ``p = softmax(logits)`` and ``g`` the one-hot target, ``IoU_k = (sum p*g + s) / (sum (p + g - p*g) + s)``,
    summed over the whole batch and every voxel (a "batch" IoU, as nnU-Net's batch Dice: a patch without
    foreground does not produce a 0/0 term). Computed in float32 even under mixed precision. Returns a
    scalar.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    first = 0 if include_background or num_classes == 1 else 1
    probs, one_hot = probs[:, first:], one_hot[:, first:]
    dims = [0] + list(range(2, probs.dim()))
    intersection = (probs * one_hot).sum(dims)
    union = (probs + one_hot).sum(dims) - intersection
    iou = (intersection + smooth) / (union + smooth)
    return 1.0 - iou.mean()
