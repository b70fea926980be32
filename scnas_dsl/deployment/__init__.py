"""Deployment: a trained network as a plain model other tools run (``export.py``: ONNX checked in
onnxruntime, a ``torch.export`` program, the standalone PyTorch source with its weights). nnU-Net v2's own
trainer takes a genotype through ``scnas_dsl/integrations/`` (its plans name that path, so it stays there).
"""
