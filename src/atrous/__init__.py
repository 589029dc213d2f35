"""atrous: exact receptive fields and dilated segmentation models."""

from atrous.errors import AtrousError
from atrous.models.registry import create_model, list_models
from atrous.rf import RFReport, analyze
from atrous.train.inference import load
from atrous.train.predict import predict

__version__ = "0.1.0"

__all__ = [
    "AtrousError",
    "RFReport",
    "__version__",
    "analyze",
    "create_model",
    "list_models",
    "load",
    "predict",
]
