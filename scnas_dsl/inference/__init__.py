"""Inference: how any segmentation network sees a whole volume, patch by patch (``sliding_window.py``: windows of
the patch size, their overlap, the Gaussian or constant blend, test-time mirroring).

Pure functions of a network and a tensor: they read no file and know no run folder, so training's validation
uses them from below and ``scnas predict`` (``scnas_dsl/prediction/``) from above.
"""
