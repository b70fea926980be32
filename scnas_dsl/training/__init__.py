"""Training: fitting networks, in one epoch loop for the search and the retraining.

The bi-level search (``search.py``, Algorithm 1 of the paper) and its per-epoch report (``search_report.py``);
the choice of the genotype at the search's end and its self-check (``selection.py``), also from a finished
search folder (``derive_run.py``: ``scnas derive``, ``scnas rank``); retraining a genotype (``retrain.py``). They
share the loop (``loop.py``), the settings (``config.py``), the data of a run (``data_context.py``), the loss
(``losses.py``), devices, mixed precision and ``torchrun`` (``device.py``), ``torch.compile`` (``compiling.py``),
checkpoints (``checkpoint.py``), resuming (``resume.py``), the plots (``plots.py``) and the run folder, whose file
names and typed records live in ``runs.py`` alone. Sliding windows and Dice come from below
(``scnas_dsl/inference/``, ``scnas_dsl/evaluation/``); nothing here reads another run's folder for prediction.
"""
