"""The model zoo: ``atrous.create_model(name, **kwargs)``.

Each model registers itself with ``@register`` where it is defined; this is the one place that imports those
modules, so that importing anything from ``atrous.models`` (the registry included) finds the zoo complete, as
torchvision's ``models/__init__.py`` does.
"""

from atrous.models import blocks, context, deeplab, resnet, seed, unet  # noqa: F401  (imported to register)
from atrous.models.registry import create_model, list_models

__all__ = ["create_model", "list_models"]
