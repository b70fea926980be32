"""Search spaces and genotypes built directly as model objects (no parser), small enough for CPU tests."""

from __future__ import annotations

import random

from scnas_dsl.model import (
    Block,
    CellChoice,
    CellRef,
    CellSpec,
    ChosenEdge,
    EdgeSpec,
    Genotype,
    NodeChoice,
    OpCall,
    OpSet,
    OpSpec,
    OutputSpec,
    Param,
    SearchSpace,
    Topology,
)

PAPER_OPS: tuple[tuple[str, str, dict], ...] = (
    ("conv3", "conv", {"kernel": 3}),
    ("dil2", "sep_conv", {"kernel": 3, "dilation": 2}),
    ("dil3", "sep_conv", {"kernel": 3, "dilation": 3}),
    ("dil4", "sep_conv", {"kernel": 3, "dilation": 4}),
    ("maxpool", "max_pool", {"kernel": 3}),
    ("avgpool", "avg_pool", {"kernel": 3}),
    ("skip", "identity", {}),
    ("none", "zero", {}),
)


def call(kind: str, **params: object) -> OpCall:
    return OpCall(kind=kind, params=tuple(Param(name=k, value=v) for k, v in params.items()))  # type: ignore[arg-type]


def opset(name: str = "paper", ops: tuple[tuple[str, str, dict], ...] = PAPER_OPS, copies: int = 1) -> OpSet:
    """The paper's eight operations (or ``ops``), repeated ``copies`` times with suffixed names."""
    specs = []
    for c in range(copies):
        for op_name, kind, params in ops:
            specs.append(OpSpec(name=op_name if c == 0 else f"{op_name}_{c}", call=call(kind, **params)))
    return OpSet(name=name, ops=tuple(specs))


def unet_space(*, nodes: int = 2, inputs: int = 2, dims: int = 2, width: int = 4, levels: int = 1,
               copies: int = 1, share: str = "by_type", bridge: bool = True, ops=PAPER_OPS,
               output: str = "concat") -> SearchSpace:
    """A paper-like U-Net: encoder (red enc) x levels minus the last enc, bridge enc, decoder (exp dec)."""
    cells = tuple(
        CellSpec(name=n, role=r, nodes=nodes, inputs=inputs, ops="paper", output=OutputSpec(kind=output))  # type: ignore[arg-type]
        for n, r in (("enc", "normal"), ("red", "reduction"), ("dec", "normal"), ("exp", "expansion"))
    )
    encoder: list[str] = []
    for level in range(levels):
        encoder += ["red"] + (["enc"] if level < levels - 1 else [])
    decoder = ["exp", "dec"] * levels
    topo = Topology(
        dims=dims, stem=Block(call=call("conv_block", kernel=3), width=width),
        encoder=tuple(CellRef(name=n) for n in encoder), bridge=(CellRef(name="enc"),) if bridge else (),
        decoder=tuple(CellRef(name=n) for n in decoder), head=Block(call=call("logits", kernel=1)),
        share=share,  # type: ignore[arg-type]
    )
    return SearchSpace(name="tiny", opsets=(opset(ops=ops, copies=copies),), cells=cells, unet=topo)


def baseline_space(dims: int = 2, width: int = 4) -> SearchSpace:
    """A U-ResNet-like baseline: one-input cells with explicit edges and a single output node."""
    edges = (EdgeSpec(src="in0", dst="n0"), EdgeSpec(src="n0", dst="n1"), EdgeSpec(src="in0", dst="n1"))
    ops = OpSet(name="res", ops=(OpSpec(name="conv3", call=call("conv", kernel=3)),
                                  OpSpec(name="skip", call=call("identity"))))
    cells = (
        CellSpec(name="block", role="normal", nodes=2, inputs=1, ops="res", edges=edges,
                 output=OutputSpec(kind="node", nodes=("n1",))),
        CellSpec(name="down", role="reduction", nodes=1, inputs=1, ops="res",
                 edges=(EdgeSpec(src="in0", dst="n0"),), output=OutputSpec(kind="sum")),
        CellSpec(name="up", role="expansion", nodes=1, inputs=1, ops="res",
                 edges=(EdgeSpec(src="in0", dst="n0"),)),
    )
    topo = Topology(
        dims=dims, stem=Block(call=call("res_block", kernel=3), width=width),
        encoder=(CellRef(name="block"), CellRef(name="down"), CellRef(name="block")),
        decoder=(CellRef(name="up"), CellRef(name="block")), head=Block(call=call("logits", kernel=1)),
    )
    return SearchSpace(name="ures", opsets=(ops,), cells=cells, unet=topo)


def baseline_genotype() -> Genotype:
    return Genotype(name="ures_fixed", space="ures", cells=(
        CellChoice(cell="block", nodes=(
            NodeChoice(node="n0", edges=(ChosenEdge(op="conv3", src="in0"),)),
            NodeChoice(node="n1", edges=(ChosenEdge(op="conv3", src="n0"), ChosenEdge(op="skip", src="in0"))),
        )),
        CellChoice(cell="down", nodes=(NodeChoice(node="n0", edges=(ChosenEdge(op="conv3", src="in0"),)),)),
        CellChoice(cell="up", nodes=(NodeChoice(node="n0", edges=(ChosenEdge(op="conv3", src="in0"),)),)),
    ))


def random_genotype(space: SearchSpace, seed: int = 0, allow_zero: bool = False) -> Genotype:
    """One random operation on every edge of every structure key (no zero unless ``allow_zero``)."""
    rng = random.Random(seed)
    cells = []
    instances = dict(space.instances())
    for key in space.structure_keys():
        spec = instances.get(key) or space.cell(key)
        assert spec is not None
        names = [o.name for o in space.opset(spec.ops).ops if allow_zero or o.call.kind != "zero"]  # type: ignore[union-attr]
        nodes = []
        for node in spec.node_names():
            incoming = tuple(ChosenEdge(op=rng.choice(names), src=s) for s, d in spec.edge_list() if d == node)
            nodes.append(NodeChoice(node=node, edges=incoming))
        cells.append(CellChoice(cell=key, nodes=tuple(nodes)))
    return Genotype(name="random", space=space.name, cells=tuple(cells))
