"""Networks: ResNet-12 with a rotation head, DropBlock, the heads objectives attach, and a name registry."""
from models.heads import ProjectedFeatures, ProjectionHead, WithConnectors, WithProjection, connector
from models.registry import DEFAULT_MODEL, architecture_of, create_model, list_models, register_model
from models.resnet12 import ResNet12SSL, SSLOutput

__all__ = ["DEFAULT_MODEL", "ProjectedFeatures", "ProjectionHead", "ResNet12SSL", "SSLOutput", "WithConnectors",
           "WithProjection", "architecture_of", "connector", "create_model", "list_models", "register_model"]
