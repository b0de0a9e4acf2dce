"""Serving models over HTTP: a FastAPI application with a web page.

Attributes load on first use, so that the server's settings (``settings``) can be read without
importing FastAPI or torch."""

import lazy_loader as lazy

__getattr__, __dir__, __all__ = lazy.attach_stub(__name__, __file__)
