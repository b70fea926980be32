"""Studies: runs of runs, read back and compared. Cross-validation as the paper and nnU-Net report it
(``cv.py``: ``scnas cv``, five folds, a search per fold for a space), several cross-validations side by side with
paired tests (``compare.py``: ``scnas compare``), and the whole method on generated data (``demo.py``:
``scnas demo``).
"""
