"""Networks and nothing else: the Backbone protocol every network provides, the release's networks (the
ResNets, Conv-4, WRN-28-10) with SKD's rotation head (and a narrow ResNet-12 for tests), DropBlock (both
masks), the heads objectives attach, and the registry (`MODELS`, `create_model`, `architecture_of`). No
data, losses, devices or training here: a loss goes in distill/, how a method uses a network in methods/."""
from models.heads import ProjectedFeatures, ProjectionHead, WithConnectors, WithProjection, connector
from models.backbone import Backbone, SSLOutput
from models.registry import DEFAULT_MODEL, MODELS, architecture_of, create_model, list_models
from models.resnet import ResNetSSL

__all__ = ["DEFAULT_MODEL", "MODELS", "Backbone", "ProjectedFeatures", "ProjectionHead", "ResNetSSL", "SSLOutput",
           "WithConnectors", "WithProjection", "architecture_of", "connector", "create_model", "list_models"]
