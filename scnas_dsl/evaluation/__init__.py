"""Evaluation: Dice per label and case, and the evaluation of a folder of predictions against its references
(``metrics.py``: ``scnas evaluate``, ``summary.json``/``dice.csv``, nnU-Net's rules for empty references).

It reads label maps and knows no network and no run folder, so training's validation counts Dice with it and the
cross-validation and comparison (``scnas_dsl/studies/``) score folders with it.
"""
