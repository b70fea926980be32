"""The trainer: search, retraining, prediction and evaluation on top of the compiler and the data pipeline.

Public API (see docs/training.md):

* :func:`scnas_dsl.train.search.run_search` and :func:`scnas_dsl.train.retrain.run_train`, configured by
  :class:`scnas_dsl.train.config.SearchConfig` / :class:`scnas_dsl.train.config.TrainConfig` (the paper's
  values are the defaults);
* :func:`scnas_dsl.train.predict.predict_run`, :func:`scnas_dsl.train.metrics.evaluate_folders`;
* :func:`scnas_dsl.train.losses.soft_jaccard_loss`, :func:`scnas_dsl.train.inference.sliding_window_inference`;
* :func:`scnas_dsl.train.demo.run_demo` and :func:`scnas_dsl.train.cv.run_cv`.

Only the compiler's public functions build networks here; the trainer never reads a ``.scn`` file itself
except through :mod:`scnas_dsl.loader`.
"""
