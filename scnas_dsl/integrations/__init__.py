"""scnas networks inside other frameworks (``nnunet``: nnU-Net v2's plans mechanism)."""
