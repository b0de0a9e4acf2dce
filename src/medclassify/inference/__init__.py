"""Using a trained model: prediction on new images (PyTorch or ONNX Runtime) and export.

Attributes load on first use, so that predicting with an ONNX model does not import torch.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
