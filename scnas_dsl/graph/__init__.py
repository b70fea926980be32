"""The checked model as graphs: cell DAGs and the U-Net (networkx), the printer back to ``.scn`` text,
summaries and drawings (``scnas_dsl.graph.draw`` imports matplotlib, so it is not imported here)."""
