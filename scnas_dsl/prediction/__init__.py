"""Prediction: a trained run folder's network on new images (``predict.py``: ``scnas predict``): the run's
preprocessing, sliding windows with its patch and blend, the probabilities or labels written back to each
image's original grid as NIfTI, and Dice when references are given.

It reads run folders that training wrote, so it sits above training; the studies and the export build on it.
"""
