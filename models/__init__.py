"""Networks and nothing else: ResNet-12 with its rotation head (and its narrow test variant),
DropBlock (both masks), the heads objectives attach, and the name registry (`create_model`,
`architecture_of`). No data, losses, devices or training here: a loss goes in distill/, how a method
uses a network in methods/."""
from models.heads import ProjectedFeatures, ProjectionHead, WithConnectors, WithProjection, connector
from models.registry import DEFAULT_MODEL, architecture_of, create_model, list_models, register_model
from models.resnet12 import ResNet12SSL, SSLOutput

__all__ = ["DEFAULT_MODEL", "ProjectedFeatures", "ProjectionHead", "ResNet12SSL", "SSLOutput", "WithConnectors",
           "WithProjection", "architecture_of", "connector", "create_model", "list_models", "register_model"]
