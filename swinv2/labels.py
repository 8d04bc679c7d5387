"""The ImageNet-22K -> 1K class map used to slice a 21841-class head down to 1000 classes.

The released 22K models were fine-tuned to 1K with a head initialised from the rows of the 22K
head given by this map (the official repo's ``map22kto1k.txt``). It is rebuilt here from the
synset lists timm ships, rather than copied:

- entry ``i`` is the index of ImageNet-1K synset ``i`` in the 21,843-synset list of Google's
  ImageNet-21k release (timm's ``imagenet-21k-goog``);
- teddy bear (n04399382) is not in that list; the released map sends it to 5564 (n03013580,
  "chemise, shimmy, shift, slip, teddy"), and so do we.

The 22K heads are 21841 wide (ImageNet fall11), two synsets narrower than the Google list
(n03931044 at 9205, n09859684 at 15027 are not in fall11). The offsets are therefore those of the
Google list, as in the released map, not fall11 positions: this reproduces the released fine-tunes'
initialisation. Every index still fits the head: the largest, 21817 (toilet tissue, the last 1K
synset), is below 21841, and the 1000 indices are distinct; ``imagenet22k_to_1k_indices`` checks both.
"""

from __future__ import annotations

import functools

import torch
from timm.data import ImageNetInfo

NUM_CLASSES_22K = 21841
NUM_CLASSES_1K = 1000
TEDDY_BEAR = "n04399382"
TEDDY_BEAR_22K_INDEX = 5564


@functools.cache
def imagenet22k_to_1k_indices() -> torch.Tensor:
    """(1000,) int64: row of a 21841-class head for each ImageNet-1K class, in 1K order."""
    google = {synset: i for i, synset in enumerate(ImageNetInfo("imagenet-21k-goog").label_names())}
    google[TEDDY_BEAR] = TEDDY_BEAR_22K_INDEX
    indices = torch.tensor([google[s] for s in ImageNetInfo("imagenet-1k").label_names()])
    assert len(indices) == NUM_CLASSES_1K and len(indices.unique()) == NUM_CLASSES_1K
    assert int(indices.max()) < NUM_CLASSES_22K
    return indices
