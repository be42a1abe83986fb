"""Samples as tensors for a torch DataLoader."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maae.data.common import Sample
from maae.data.images import check_mask_size, decode_image, mask_array, open_image


class AnomalyDataset(torch.utils.data.Dataset):
    """Samples as tensors: ``image`` (3xSxS float in [0, 1]), ``mask`` (1xSxS float in {0, 1}), ``label``,
    ``category_index`` (position of the sample's category in ``categories``) and ``index``.

    An image that had to be converted or enlarged is said once per image, on its first read, not every epoch.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, categories: Sequence[str]) -> None:
        self.samples: list[Sample] = list(samples)
        self.image_size = int(image_size)
        self.categories: list[str] = list(categories)
        self._category_index = {name: index for index, name in enumerate(self.categories)}
        self._warned: set[int] = set()
        missing = sorted({sample.category for sample in self.samples} - set(self._category_index))
        if missing:
            raise ValueError(f"samples of categories {missing} are not in categories {self.categories}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = decode_image(sample.image_path)
        if index not in self._warned:
            self._warned.add(index)
            image.warn(self.image_size)
        if sample.mask_path is None:
            mask = np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        else:
            mask_image = open_image(sample.mask_path)
            check_mask_size(sample.image_path, image.size, sample.mask_path, mask_image.size)
            mask = mask_array(mask_image, self.image_size)
        pixels = image.model_input(self.image_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "label": sample.label,
            "category_index": self._category_index[sample.category],
            "index": index,
        }
