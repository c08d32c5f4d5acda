"""Everything that turns data files into tensors: one reader per official package, the `folder`
and `synthetic` datasets, one profile per dataset, transforms and the batched on-device augmentation,
loaders, the episode sampler, and the data commands (`python -m dataset.prepare`, `dataset.check`).
Nothing here knows about networks or training."""
from dataset.catalog import DATASETS, dataset_names, load_split
from dataset.episodes import Episode, sample_episode, sample_episodes
from dataset.errors import DataError
from dataset.imageset import ImageSet

__all__ = ["DATASETS", "DataError", "Episode", "ImageSet", "dataset_names", "load_split", "sample_episode",
           "sample_episodes"]
