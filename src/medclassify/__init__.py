"""medclassify: train, evaluate, compare, explain and serve CNNs for medical image classification.

Attributes load on first use: ``medclassify predict`` with an ONNX model starts without importing torch.
"""

import lazy_loader as lazy

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
