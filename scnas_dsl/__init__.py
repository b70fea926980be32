"""scnas: a declarative architecture DSL, compiler and trainer for SCNAS.

The flow runs one way: ``.scn`` text -> parse tree -> checked model (pydantic) -> cell DAGs (networkx)
-> PyTorch modules -> trainer. Importing this package (or ``scnas_dsl.model`` / ``scnas_dsl.syntax``)
must not import torch: the front end stays light and fast. The entry points below are therefore imported
on first use (``scnas_dsl.create_model`` imports the compiler and torch then, ``scnas_dsl.load`` does not).

The Python API, one way in for each stage (docs/python-api.md):

* the language: :func:`load`, :func:`load_text`;
* networks: :func:`create_model` (a ``.scn`` file or text -> a fixed network or a supernet, as
  ``timm.create_model``), :func:`build_network`, :func:`build_supernet`, :func:`estimate`, :func:`emit_torch`;
* data: :func:`synthesize`, :func:`preprocess_dataset`;
* search and training: :class:`SearchConfig`, :class:`TrainConfig`, :class:`SelectionConfig`,
  :func:`run_search`, :func:`run_train`, :func:`open_search`, :func:`derive`, :func:`rank`,
  :func:`sample_genotypes`;
* inference and evaluation: :func:`predict_run`, :func:`evaluate_folders`, :func:`run_cv`, :func:`compare_runs`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: name -> the module that defines it (imported on first use)
_EXPORTS = {
    "load": "scnas_dsl.loader",
    "load_text": "scnas_dsl.loader",
    "create_model": "scnas_dsl.nn.create",
    "build_network": "scnas_dsl.nn",
    "build_supernet": "scnas_dsl.nn",
    "estimate": "scnas_dsl.nn.cost",
    "emit_torch": "scnas_dsl.nn.codegen",
    "sample_genotypes": "scnas_dsl.nn.random_genotypes",
    "synthesize": "scnas_dsl.data.synth",
    "preprocess_dataset": "scnas_dsl.data.preprocess",
    "SearchConfig": "scnas_dsl.training.config",
    "TrainConfig": "scnas_dsl.training.config",
    "SelectionConfig": "scnas_dsl.training.config",
    "run_search": "scnas_dsl.training.search",
    "run_train": "scnas_dsl.training.retrain",
    "open_search": "scnas_dsl.training.derive_run",
    "derive": "scnas_dsl.training.derive_run",
    "rank": "scnas_dsl.training.derive_run",
    "predict_run": "scnas_dsl.prediction.predict",
    "evaluate_folders": "scnas_dsl.evaluation.metrics",
    "run_cv": "scnas_dsl.studies.cv",
    "compare_runs": "scnas_dsl.studies.compare",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scnas_dsl' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
