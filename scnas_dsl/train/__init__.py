"""The old home of the trainer, kept so that imports a user could have written still work.

Until the trainer was split into stage folders (``training/``, ``inference/``, ``evaluation/``, ``prediction/``,
``studies/``, ``deployment/``), this package's docstring named ``scnas_dsl.train.search.run_search`` and its
neighbours as the public API. Those module paths still import the modules from their new homes, with a
``DeprecationWarning``; new code imports from ``scnas_dsl`` (docs/python-api.md) or the new folders.
"""

from __future__ import annotations

import importlib
import sys
import warnings

#: old module name -> its new home (the modules the old docstring and docs named)
MOVED = {
    "config": "scnas_dsl.training.config",
    "search": "scnas_dsl.training.search",
    "retrain": "scnas_dsl.training.retrain",
    "losses": "scnas_dsl.training.losses",
    "derive_run": "scnas_dsl.training.derive_run",
    "inference": "scnas_dsl.inference.sliding_window",
    "metrics": "scnas_dsl.evaluation.metrics",
    "predict": "scnas_dsl.prediction.predict",
    "cv": "scnas_dsl.studies.cv",
    "compare": "scnas_dsl.studies.compare",
    "demo": "scnas_dsl.studies.demo",
    "export": "scnas_dsl.deployment.export",
}

warnings.warn("scnas_dsl.train is now scnas_dsl.training (and inference, evaluation, prediction, studies, "
              "deployment); import from scnas_dsl or the new modules", DeprecationWarning, stacklevel=2)
for _old, _new in MOVED.items():
    sys.modules[f"{__name__}.{_old}"] = _module = importlib.import_module(_new)
    globals()[_old] = _module
