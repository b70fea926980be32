"""scnas: a declarative architecture DSL, compiler and trainer for SCNAS.

The flow runs one way: ``.scn`` text -> parse tree -> checked model (pydantic) -> cell DAGs (networkx)
-> PyTorch modules -> trainer. Importing this package (or ``scnas_dsl.model`` / ``scnas_dsl.syntax``)
must not import torch: the front end stays light and fast.
"""

__version__ = "0.1.0"
