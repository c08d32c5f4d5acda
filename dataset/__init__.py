"""Everything that turns data files into tensors."""
from dataset.catalog import DATASETS, dataset_names, load_split
from dataset.episodes import Episode, sample_episode, sample_episodes
from dataset.errors import DataError
from dataset.imageset import ImageSet

__all__ = ["DATASETS", "DataError", "Episode", "ImageSet", "dataset_names", "load_split", "sample_episode",
           "sample_episodes"]
