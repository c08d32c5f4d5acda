"""Networks and nothing else: the Backbone protocol every network provides, ResNet-12 with its rotation
head (and its narrow test variant), DropBlock (both masks), the heads objectives attach, and the registry
(`MODELS`, `create_model`, `architecture_of`). No data, losses, devices or training here: a loss goes in
distill/, how a method uses a network in methods/."""
from models.heads import ProjectedFeatures, ProjectionHead, WithConnectors, WithProjection, connector
from models.backbone import Backbone, SSLOutput
from models.registry import DEFAULT_MODEL, MODELS, architecture_of, create_model, list_models
from models.resnet12 import ResNet12SSL

__all__ = ["DEFAULT_MODEL", "MODELS", "Backbone", "ProjectedFeatures", "ProjectionHead", "ResNet12SSL", "SSLOutput",
           "WithConnectors", "WithProjection", "architecture_of", "connector", "create_model", "list_models"]
