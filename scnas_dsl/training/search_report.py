"""What a search reports on itself every epoch, beyond its losses.

* Per edge: the most likely operation, its probability and the entropy (nats) of softmax(alpha).
* How many edges changed their most likely operation since the last epoch (the first epoch compares with the
  initial logits).
* The share of parameter-free operations (zero, identity, pooling) among the most likely operations of all
  edges: differentiable NAS is known to collapse to them.
* The discretisation gap: the soft Jaccard loss and the mean foreground Dice of the argmax architecture (the
  supernet with its inherited weights, in evaluation mode) next to those of the sampled supernet, both on the
  same fixed patches of the architecture part (the same patches every epoch, so the curves are comparable;
  the sampled architectures come from a generator of their own, so measuring never changes the search).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from scnas_dsl.data.loader import PatchLoader
from scnas_dsl.nn.supernet import Supernet
from scnas_dsl.stopping import stop_requested
from scnas_dsl.training.device import Runtime
from scnas_dsl.training.losses import soft_jaccard_loss

Choices = dict[str, dict[str, str]]
"""structure key -> ``"src->dst"`` -> the most likely operation."""


def entropy_table(probabilities: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Entropy (nats) of each edge's operation distribution: key -> "src->dst" -> H."""
    return {key: {edge: -sum(p * math.log(p) for p in ops.values() if p > 0) for edge, ops in edges.items()}
            for key, edges in probabilities.items()}


def edge_table(probabilities: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """key -> edge -> ``{"op": most likely operation, "p": its probability, "entropy": H in nats}``."""
    entropy = entropy_table(probabilities)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, edges in probabilities.items():
        out[key] = {}
        for edge, ops in edges.items():
            op = max(ops, key=lambda name: ops[name])
            out[key][edge] = {"op": op, "p": ops[op], "entropy": entropy[key][edge]}
    return out


def choices_of(table: dict[str, dict[str, dict[str, Any]]]) -> Choices:
    """The most likely operation of every edge, from :func:`edge_table`."""
    return {key: {edge: row["op"] for edge, row in edges.items()} for key, edges in table.items()}


def changed_edges(before: Choices | None, now: Choices) -> int:
    """How many edges have another most likely operation than in ``before`` (0 without ``before``)."""
    if before is None:
        return 0
    return sum(1 for key, edges in now.items() for edge, op in edges.items()
               if before.get(key, {}).get(edge) != op)


def parameter_free_share(choices: Choices, free: dict[str, set[str]]) -> float:
    """The share of edges whose most likely operation has no parameters (see ``Supernet.parameter_free``)."""
    every = [op in free.get(key, set()) for key, edges in choices.items() for op in edges.values()]
    return sum(every) / len(every) if every else float("nan")


class DiceCounts:
    """True positives, false positives and false negatives per foreground class, summed over batches on the
    logits' device (read once, by :meth:`values`: no wait for the GPU per batch)."""

    def __init__(self, num_classes: int) -> None:
        self.counts: torch.Tensor | None = None
        self.num_classes = num_classes

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        pred = logits.argmax(1)
        target = target.to(pred.device)
        rows = []
        for c in range(1, self.num_classes):
            p, g = pred == c, target == c
            rows.append(torch.stack([(p & g).sum(), (p & ~g).sum(), (~p & g).sum()]))
        if not rows:
            return
        counts = torch.stack(rows, dim=1).to(torch.float64)  # (3, K - 1)
        self.counts = counts if self.counts is None else self.counts + counts

    def values(self) -> list[float]:
        if self.counts is None:
            return [0.0] * (3 * max(self.num_classes - 1, 1))
        return self.counts.flatten().tolist()

    @staticmethod
    def mean_dice(flat: list[float], classes: int) -> float:
        """Mean over the foreground classes of 2TP / (2TP + FP + FN); a class absent from both is left out."""
        k = max(classes - 1, 1)
        tp, fp, fn = flat[:k], flat[k:2 * k], flat[2 * k:]
        scores = [2 * a / (2 * a + b + c) for a, b, c in zip(tp, fp, fn, strict=True) if 2 * a + b + c > 0]
        return sum(scores) / len(scores) if scores else float("nan")


@torch.no_grad()
def discretisation_gap(model: Supernet, loader: PatchLoader, runtime: Runtime, seed: int) -> dict[str, float]:
    """Loss and mean foreground Dice of the argmax architecture and of the sampled supernet on the fixed
    patches of ``loader`` (epoch 0 of it, every time), averaged over the ranks. The sampled supernet draws one
    architecture per batch from a generator seeded with ``seed``. A stop signal (Ctrl-C, SIGTERM) skips the
    batches left: every value is then NaN."""
    was_training = model.training
    model.eval()  # the same mode for both: the only difference is the architecture
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, Any] = {"argmax": 0.0, "sampled": 0.0}
    dice = {"argmax": DiceCounts(model.num_classes), "sampled": DiceCounts(model.num_classes)}
    batches, stopped = 0, False
    try:
        loader.set_epoch(0)
        for x, y in loader:
            # a stop signal skips the rest of the gap (a diagnosis): the epoch ends, its checkpoint is saved and
            # the loop stops there; decided by all ranks together (they measure the same number of batches)
            if runtime.mean_values([float(stop_requested())])[0] > 0:
                stopped = True
                break
            x, y = runtime.to_device(x), runtime.to_device(y)
            for name, samples in (("argmax", model.argmax_samples()), ("sampled", model.draw_samples(generator))):
                with runtime.autocast():
                    logits = model(x, samples=samples)
                loss = soft_jaccard_loss(logits, y).detach()  # summed on the device, read once at the end
                losses[name] = loss if isinstance(losses[name], float) else losses[name] + loss
                dice[name].add(logits, y)
            batches += 1
    finally:
        model.train(was_training)
    if stopped:  # not measured: NaN in the record ("-" in the report line, a hole in the plots)
        return dict.fromkeys(("argmax_loss", "sampled_loss", "argmax_dice", "sampled_dice"), math.nan)
    values = [float(losses["argmax"]) / max(batches, 1), float(losses["sampled"]) / max(batches, 1),
              *dice["argmax"].values(), *dice["sampled"].values()]
    reduced = runtime.mean_values(values)  # means of sums keep the ratios of the Dice counts
    k = len(dice["argmax"].values())
    return {
        "argmax_loss": reduced[0], "sampled_loss": reduced[1],
        "argmax_dice": DiceCounts.mean_dice(reduced[2:2 + k], model.num_classes),
        "sampled_dice": DiceCounts.mean_dice(reduced[2 + k:], model.num_classes),
    }
