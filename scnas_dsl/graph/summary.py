"""A summary of a space or a genotype for ``scnas compile``: cells, edges, candidates, search-space size.

``summarize`` returns plain JSON-able data; ``render_text`` lays it out for people. The compiler adds its
own keys (parameters, FLOPs, memory) to the same dict.
"""

from __future__ import annotations

import math
from typing import Any

from scnas_dsl.graph.cells import cell_type_of, spec_of
from scnas_dsl.model import Genotype, SearchSpace


def summarize(space: SearchSpace, genotype: Genotype | None = None) -> dict[str, Any]:
    """The summary of ``space`` (every edge with its candidate operations) or of ``genotype`` in it
    (every chosen edge with its operation).

    ``arch_logits``: the number of architecture logits (alpha entries), the sum over structure keys of
    edges x candidates (0 for a genotype). ``log10_architectures``: log10 of the number of distinct
    architectures, the product over structure keys and edges of the number of candidates (zero counts as
    a candidate); 0.0 for a genotype (one architecture).
    """
    cells: list[dict[str, Any]] = []
    logits = 0
    log10 = 0.0
    for key in space.structure_keys():
        spec = spec_of(space, key)
        opset = space.opset(spec.ops)
        candidates = opset.names() if opset is not None else []
        edges: list[dict[str, Any]] = []
        if genotype is None:
            for src, dst in spec.edge_list():
                edges.append({"src": src, "dst": dst, "candidates": list(candidates)})
            logits += len(spec.edge_list()) * len(candidates)
            if candidates:
                log10 += len(spec.edge_list()) * math.log10(len(candidates))
        else:
            choice = genotype.cell(key)
            chosen = choice.chosen() if choice is not None else {}
            order = {pair: i for i, pair in enumerate(spec.edge_list())}
            for (src, dst), op in sorted(chosen.items(), key=lambda kv: order.get(kv[0], len(order))):
                edges.append({"src": src, "dst": dst, "op": op})
        cells.append({
            "key": key,
            "type": cell_type_of(key),
            "role": spec.role,
            "nodes": spec.nodes,
            "inputs": spec.inputs,
            "ops": spec.ops,
            "output": {"kind": spec.output.kind, "nodes": spec.output_nodes()},
            "edges": edges,
        })
    unet = space.unet
    return {
        "kind": "space" if genotype is None else "genotype",
        "name": space.name if genotype is None else genotype.name,
        "space": space.name,
        "dims": unet.dims,
        "share": unet.share,
        "stem": {"op": unet.stem.call.kind, "width": unet.stem.width},
        "head": {"op": unet.head.call.kind},
        "width_factor": unet.width_factor,
        "node_width": unet.node_width,
        "deep_supervision": list(unet.deep_supervision),
        "skips": unet.skips,
        "sequence": [name for name, _ in space.instances()],
        "cells": cells,
        "arch_logits": logits,
        "log10_architectures": round(log10, 6),
    }


def render_text(summary: dict[str, Any]) -> str:
    """The summary as aligned text for a terminal."""
    kind = summary["kind"]
    head = f"{kind} {summary['name']}" + (f" of {summary['space']}" if kind == "genotype" else "")
    lines = [head, f"  dims {summary['dims']}, share {summary['share']}"]
    if "stem" in summary:
        lines.append(f"  stem {summary['stem']['op']} -> {summary['stem']['width']}, "
                     f"width x{summary.get('width_factor', 2)} per level, node width {summary.get('node_width', 'split')}, "
                     f"head {summary['head']['op']}")
    if summary.get("deep_supervision") or summary.get("skips", "sum") != "sum":
        levels = summary.get("deep_supervision") or []
        ds = f"heads at levels 0, {', '.join(map(str, levels))}" if levels else "off"
        lines.append(f"  deep supervision {ds}; skips {summary.get('skips', 'sum')}"
                     + (" (attention-gated)" if summary.get("skips") == "attention" else ""))
    if "sequence" in summary:
        lines.append(f"  cells in order ({len(summary['sequence'])}): {' '.join(summary['sequence'])}")
    for cell in summary["cells"]:
        lines.append(f"  cell {cell['key']} ({cell['role']}): {_count(cell['nodes'], 'node')}, "
                     f"{_count(cell['inputs'], 'input')}, {_count(len(cell['edges']), 'edge')}")
        sets = {tuple(e["candidates"]) for e in cell["edges"] if "candidates" in e}
        if len(sets) == 1 and all("candidates" in e for e in cell["edges"]):
            # The usual space: one candidate set on every edge; list it once.
            (candidates,) = sets
            lines.append(f"    candidates ({len(candidates)}) on every edge: {', '.join(candidates)}")
            lines.append("    edges: " + ", ".join(f"{e['src']}->{e['dst']}" for e in cell["edges"]))
            continue
        for edge in cell["edges"]:
            what = edge["op"] if "op" in edge else (
                f"{len(edge['candidates'])} candidates: {', '.join(edge['candidates'])}")
            lines.append(f"    {edge['src']:>4} -> {edge['dst']:<4} {what}")
    if kind == "space":
        lines.append(f"  architecture logits: {summary['arch_logits']}")
        lines.append(f"  search space size: 10^{summary['log10_architectures']:.2f} architectures")
    for extra, value in summary.items():
        if extra in {"kind", "name", "space", "dims", "share", "stem", "head", "width_factor", "node_width",
                     "sequence", "deep_supervision", "skips",
                     "cells", "arch_logits", "log10_architectures"}:
            continue
        lines.append(f"  {extra}: {value}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
