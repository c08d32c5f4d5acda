"""The official evaluation's cost model, episode by episode: a reference for tests and bench/.

Per episode, as the official meta-test loop does: the n_aug augmented copies of each support
image and n_aug identical copies of each query image are embedded, then scikit-learn's
LogisticRegression is fitted on the supports. Augmentations use the same per-episode generators
as `eval.fewshot.evaluate`, so both paths see identical pixels and must agree episode by episode.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from dataset.episodes import sample_episodes
from dataset.imageset import ImageSet
from dataset.transforms import Normalization, crop_flip_batch
from eval.classifiers import classify
from eval.embed import embed
from util import precision_name
from eval.fewshot import (EMBEDDINGS, EpisodeSetting, FewShotResult, episode_fingerprint, episode_generator,
                          l2_normalize)


def evaluate_reference(model: nn.Module, images: ImageSet, split: str, setting: EpisodeSetting, norm: Normalization,
                       device: torch.device, *, embedding: str = "feature", batch_size: int = 256, seed: int = 0,
                       amp: str = "off") -> FewShotResult:
    s = setting
    episodes = sample_episodes(images.class_indices(), s.n_episodes, s.n_ways, s.n_shots, s.n_queries, images.source)
    pixels = torch.from_numpy(images.images)
    padding = images.profile.crop_padding
    pick = EMBEDDINGS.index(embedding)  # embed() returns (features, logits)
    support_labels = torch.arange(s.n_ways).repeat_interleave(s.n_shots).repeat(s.n_aug)
    query_labels = torch.arange(s.n_ways).repeat_interleave(s.n_queries).repeat(s.n_aug)
    accuracies = []
    for i, episode in enumerate(episodes):
        support_pixels = crop_flip_batch(pixels[np.tile(episode.support.reshape(-1), s.n_aug)], padding,
                                         episode_generator(seed, i))
        support = embed(model, support_pixels, norm, device, batch_size, amp)[pick].cpu()
        query = embed(model, pixels[np.tile(episode.query.reshape(-1), s.n_aug)], norm, device, batch_size,
                      amp)[pick].cpu()
        predictions = classify("sklearn", l2_normalize(support)[None], support_labels[None], l2_normalize(query)[None],
                               setting.n_ways)[0]
        accuracies.append((predictions == query_labels).double().mean().item())
    return FewShotResult(split, setting, embedding, "sklearn", np.array(accuracies),
                         precision=precision_name(device, amp),
                         fingerprint=episode_fingerprint(images, setting, seed), image_size=images.image_size)
