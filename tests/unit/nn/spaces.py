"""Search spaces and genotypes built directly as model objects (no parser), small enough for CPU tests."""

from __future__ import annotations

import random

from scnas_dsl import model as m

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


def call(kind: str, **params: object) -> m.OpCall:
    return m.OpCall(kind=kind, params=tuple(m.Param(name=k, value=v) for k, v in params.items()))  # type: ignore[arg-type]


def opset(name: str = "paper", ops: tuple[tuple[str, str, dict], ...] = PAPER_OPS, copies: int = 1) -> m.OpSet:
    """The paper's eight operations (or ``ops``), repeated ``copies`` times with suffixed names."""
    specs = []
    for c in range(copies):
        for op_name, kind, params in ops:
            specs.append(m.OpSpec(name=op_name if c == 0 else f"{op_name}_{c}", call=call(kind, **params)))
    return m.OpSet(name=name, ops=tuple(specs))


def unet_space(*, nodes: int = 2, inputs: int = 2, dims: int = 2, width: int = 4, levels: int = 1,
               copies: int = 1, share: str = "by_type", bridge: bool = True, ops=PAPER_OPS,
               output: str = "concat", node_width: str = "split") -> m.SearchSpace:
    """A paper-like U-Net: encoder (red enc) x levels minus the last enc, bridge enc, decoder (exp dec)."""
    cells = tuple(
        m.CellSpec(name=n, role=r, nodes=nodes, inputs=inputs, ops="paper", output=m.OutputSpec(kind=output))  # type: ignore[arg-type]
        for n, r in (("enc", "normal"), ("red", "reduction"), ("dec", "normal"), ("exp", "expansion"))
    )
    encoder: list[str] = []
    for level in range(levels):
        encoder += ["red"] + (["enc"] if level < levels - 1 else [])
    decoder = ["exp", "dec"] * levels
    topo = m.Topology(
        dims=dims, stem=m.Block(call=call("conv_block", kernel=3), width=width),
        encoder=tuple(m.CellRef(name=n) for n in encoder), bridge=(m.CellRef(name="enc"),) if bridge else (),
        decoder=tuple(m.CellRef(name=n) for n in decoder), head=m.Block(call=call("logits", kernel=1)),
        share=share, node_width=node_width,  # type: ignore[arg-type]
    )
    return m.SearchSpace(name="tiny", opsets=(opset(ops=ops, copies=copies),), cells=cells, unet=topo)


def baseline_space(dims: int = 2, width: int = 4) -> m.SearchSpace:
    """A U-ResNet-like baseline: one-input cells with explicit edges and a single output node."""
    edges = (m.EdgeSpec(src="in0", dst="n0"), m.EdgeSpec(src="n0", dst="n1"), m.EdgeSpec(src="in0", dst="n1"))
    ops = m.OpSet(name="res", ops=(m.OpSpec(name="conv3", call=call("conv", kernel=3)),
                                  m.OpSpec(name="skip", call=call("identity"))))
    cells = (
        m.CellSpec(name="block", role="normal", nodes=2, inputs=1, ops="res", edges=edges,
                 output=m.OutputSpec(kind="node", nodes=("n1",))),
        m.CellSpec(name="down", role="reduction", nodes=1, inputs=1, ops="res",
                 edges=(m.EdgeSpec(src="in0", dst="n0"),), output=m.OutputSpec(kind="sum")),
        m.CellSpec(name="up", role="expansion", nodes=1, inputs=1, ops="res",
                 edges=(m.EdgeSpec(src="in0", dst="n0"),)),
    )
    topo = m.Topology(
        dims=dims, stem=m.Block(call=call("res_block", kernel=3), width=width),
        encoder=(m.CellRef(name="block"), m.CellRef(name="down"), m.CellRef(name="block")),
        decoder=(m.CellRef(name="up"), m.CellRef(name="block")), head=m.Block(call=call("logits", kernel=1)),
    )
    return m.SearchSpace(name="ures", opsets=(ops,), cells=cells, unet=topo)


def baseline_genotype() -> m.Genotype:
    return m.Genotype(name="ures_fixed", space="ures", cells=(
        m.CellChoice(cell="block", nodes=(
            m.NodeChoice(node="n0", edges=(m.ChosenEdge(op="conv3", src="in0"),)),
            m.NodeChoice(node="n1", edges=(m.ChosenEdge(op="conv3", src="n0"), m.ChosenEdge(op="skip", src="in0"))),
        )),
        m.CellChoice(cell="down", nodes=(m.NodeChoice(node="n0", edges=(m.ChosenEdge(op="conv3", src="in0"),)),)),
        m.CellChoice(cell="up", nodes=(m.NodeChoice(node="n0", edges=(m.ChosenEdge(op="conv3", src="in0"),)),)),
    ))


def random_genotype(space: m.SearchSpace, seed: int = 0, allow_zero: bool = False) -> m.Genotype:
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
            incoming = tuple(m.ChosenEdge(op=rng.choice(names), src=s) for s, d in spec.edge_list() if d == node)
            nodes.append(m.NodeChoice(node=node, edges=incoming))
        cells.append(m.CellChoice(cell=key, nodes=tuple(nodes)))
    return m.Genotype(name="random", space=space.name, cells=tuple(cells))
