"""Networks: ResNet-12 with a rotation head, DropBlock, and a name registry."""
from models.heads import ProjectionHead, WithProjection
from models.registry import create_model, list_models, register_model
from models.resnet12 import ResNet12SSL, SSLOutput

__all__ = ["ProjectionHead", "ResNet12SSL", "SSLOutput", "WithProjection", "create_model", "list_models",
           "register_model"]
