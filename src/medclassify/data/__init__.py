"""Data: the dataset catalog, MedMNIST files, image folders, single image files and the in-memory
batch loader.

Attributes load on first use, so that reading an image file (``data.images``) does not import torch.
"""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
