"""Joint image/mask augmentation for real data, through kornia, deterministic per (seed, epoch, index).

Random scale (an affine zoom that keeps the canvas), a random crop padded with the ignore value, horizontal
flip, colour jitter on the image only. Masks are resampled with nearest neighbour (kornia does for the "mask"
key); pixels that come from outside the image become the ignore value, never background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> torch.Tensor:
    """[0, 1] RGB -> standardised with ImageNet statistics (what torchvision-pretrained backbones expect)."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


class JointAugment:
    def __init__(
        self,
        crop: int | None = None,
        scale: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        jitter: float = 0.2,
        ignore_index: int = 255,
    ) -> None:
        import kornia.augmentation as K  # kornia is imported only where augmentation is used

        geo = [K.RandomAffine(degrees=0.0, scale=scale, p=1.0)] if scale != (1.0, 1.0) else []
        if flip:
            geo.append(K.RandomHorizontalFlip(p=0.5))
        self.geo = K.AugmentationSequential(*geo, data_keys=["input", "mask"]) if geo else None
        self.color = K.ColorJitter(jitter, jitter, jitter, 0.0, p=1.0) if jitter > 0 else None
        self.crop, self.ignore_index = crop, ignore_index

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (C, H, W) in [0, 1], ``mask`` (H, W) int64."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.crop is not None:
                image, mask = self._pad_to(image, mask, self.crop)
            if self.geo is not None:
                # Shift labels by one so that kornia's zero fill marks "came from outside" unambiguously.
                shifted = (mask.float() + 1)[None, None]
                out_img, out_mask = self.geo(image[None], shifted)
                image = out_img[0]
                mask = out_mask[0, 0].round().long() - 1
                mask[mask < 0] = self.ignore_index
            if self.crop is not None:
                h, w = mask.shape
                y = int(torch.randint(0, h - self.crop + 1, (1,)))
                x = int(torch.randint(0, w - self.crop + 1, (1,)))
                image = image[:, y : y + self.crop, x : x + self.crop]
                mask = mask[y : y + self.crop, x : x + self.crop]
            if self.color is not None:
                image = self.color(image[None])[0]
        return image.contiguous(), mask.contiguous()

    def _pad_to(
        self, image: torch.Tensor, mask: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dy, dx = max(0, size - mask.shape[0]), max(0, size - mask.shape[1])
        if dy == 0 and dx == 0:
            return image, mask
        image = F.pad(image, [0, dx, 0, dy], value=0.0)
        mask = F.pad(mask, [0, dx, 0, dy], value=self.ignore_index)
        return image, mask
