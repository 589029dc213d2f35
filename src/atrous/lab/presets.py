"""Lab presets. ``quick`` (the default) was sized by measurement: every exercise, 3 seeds, under 10 minutes
on 2 CPU cores; ``tiny`` is the CI smoke run; ``full`` is the seed lesson's scale (200 samples, 20 epochs,
64 x 64, the seed's own models, 5 seeds)."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.errors import AtrousError


@dataclass(frozen=True)
class Preset:
    name: str
    seeds: int
    size: int  # image side of shapes / scale
    n: int  # training images per task (validation: a quarter, at least 32)
    steps: int  # optimizer steps per run
    batch_size: int
    lr: float
    width: int  # channels of the conv stacks of Ex1 / Ex5
    ex1_flops_size: int  # Exercise 1 table: FLOPs counted at this size
    ex1_erf_samples: int
    # Exercise 2 and 3: models compared on shapes and scale (label -> spec).
    unets: tuple[tuple[str, str], ...]
    others: tuple[tuple[str, str], ...]
    scale_small: int
    scale_large: int
    shapes_snr: float
    # Exercise 4: multiscale task and ASPP variants (label -> spec).
    ms_size: int
    ms_variants: tuple[tuple[str, str], ...]
    # Exercise 5: RF sweep at equal depth, for each object size (small side) in ex5_smalls.
    ex5_rfs: tuple[int, ...]
    ex5_smalls: tuple[int, ...]
    ex5_depth: int = 5


ASPP_VARIANTS = (
    ("rate 1", "aspp_net:rates=1"),
    ("rate 3", "aspp_net:rates=3"),
    ("rate 6", "aspp_net:rates=6"),
    ("rates 1,3,6", "aspp_net:rates=1,3,6"),
    ("rates 1,3,6 + pooling", "aspp_net:rates=1,3,6,image_pooling=true"),
)

PRESETS = {
    "tiny": Preset(
        name="tiny",
        seeds=1,
        size=32,
        n=48,
        steps=12,
        batch_size=8,
        lr=3e-3,
        width=8,
        ex1_flops_size=64,
        ex1_erf_samples=4,
        unets=(("U-Net", "unet:width=4,depth=2"), ("dilated U-Net", "dilated_unet:width=4,depth=2")),
        others=(
            ("DeepLabv3", "deeplabv3_small:aspp_channels=16,rates=1,2,3"),
            ("context", "context:front_width=8"),
        ),
        scale_small=4,
        scale_large=10,
        shapes_snr=2.0,
        ms_size=48,
        ms_variants=(ASPP_VARIANTS[0], ASPP_VARIANTS[3]),
        ex5_rfs=(5, 9, 17),
        ex5_smalls=(4,),
    ),
    "quick": Preset(
        name="quick",
        seeds=3,
        size=48,
        n=400,
        steps=200,
        batch_size=16,
        lr=3e-3,
        width=16,
        ex1_flops_size=64,
        ex1_erf_samples=32,
        unets=(("U-Net", "unet:width=16,depth=2"), ("dilated U-Net", "dilated_unet:width=16,depth=2")),
        others=(
            ("DeepLabv3", "deeplabv3_small:aspp_channels=32,rates=1,2,3"),
            ("context", "context:front_width=16"),
        ),
        scale_small=6,
        scale_large=16,
        shapes_snr=2.0,
        ms_size=64,
        ms_variants=ASPP_VARIANTS,
        ex5_rfs=(5, 9, 11, 13, 17, 25, 49, 129),
        ex5_smalls=(6,),
    ),
    "full": Preset(
        name="full",
        seeds=5,
        size=64,
        n=200,
        steps=250,
        batch_size=16,
        lr=1e-3,
        width=64,
        ex1_flops_size=64,
        ex1_erf_samples=64,
        unets=(("U-Net (seed)", "seed_unet"), ("dilated U-Net (seed)", "seed_dilated_unet")),
        others=(("DeepLab (seed)", "seed_deeplab"), ("context", "context:front_width=32")),
        scale_small=8,
        scale_large=24,
        shapes_snr=2.0,
        ms_size=96,
        ms_variants=ASPP_VARIANTS,
        ex5_rfs=(5, 9, 13, 17, 21, 25, 33, 49, 65, 97, 129),
        ex5_smalls=(4, 8),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AtrousError(f"unknown lab preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
