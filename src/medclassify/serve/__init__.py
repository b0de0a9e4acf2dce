"""Serving models over HTTP: a FastAPI application with a web page."""

from .app import ServeSettings, create_app
from .served import ServedModel, load_served_models

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_served_models"]
