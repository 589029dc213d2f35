"""The model zoo: ``atrous.create_model(name, **kwargs)``."""

from atrous.models.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
