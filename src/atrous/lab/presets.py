"""Lab presets. ``quick`` (the default): every exercise, 3 seeds (5 for Exercise 4), on one 2-core machine, aiming at
300 s (session 16's machine, narrower models: 216-240 s; session 14's, wider ones: 264-305 s; session 13's, 2-3x
slower a step: 409-520 s; session 17's, both processes on one core: 513 s; compare times only within one session;
BENCHMARKS.md; the lab's timings.json says where the time goes; over the target, the lab says so before
training); ``tiny`` is the CI smoke run; ``full`` is the seed lesson's scale (64 x 64 and larger, 5 seeds, wider
models; a GPU's job)."""

from __future__ import annotations

from dataclasses import dataclass

from atrous.errors import AtrousError


@dataclass(frozen=True)
class Preset:
    name: str
    seeds: int
    size: int  # image side of shapes / scale
    n: int  # training images per task (validation: a quarter, at least 32)
    steps: int  # the step cap of a run; the stopping rule (convergence.py) usually ends it before
    warmup: int  # linear warm-up steps, then a constant learning rate
    ema: float  # decay per step of the weight average that is validated and reported
    # Largest global gradient norm of a step: the common default of 1.0 (5 was also tried, BENCHMARKS.md). Without
    # it the undilated context module diverged late in 4 of 8 long runs (mIoU from about 0.9 back to 0.44-0.58; on
    # seed 151, whose norms were logged, after gradients up to 400x their median norm) and sat longer on its early
    # plateau (session 12).
    clip_grad: float
    batch_size: int
    lr: float
    width: int  # channels of the conv stacks of Ex1 / Ex5
    ex1_flops_size: int  # Exercise 1 table: FLOPs counted at this size
    ex1_erf_samples: int
    # Exercises 2 and 3: the U-Net pair whose RFs set the regimes (design.py), and the Ex3 models' widths.
    unet_width: int
    unet_depth: int
    max_rate: int  # largest bottleneck rate the dilated U-Net may use
    min_size: int  # smallest image side of a regime
    context: str  # Exercises 2 and 3: the context module (its undilated twin adds context_rates=1,...)
    aspp_width: int
    deeplab: str
    # Exercise 1's ERFs after training, and Exercise 5's large objects: scale with these object sizes.
    scale_small: int
    scale_large: int
    # Exercise 4: multiscale task and ASPP variants (label -> spec).
    ms_size: int
    ms_variants: tuple[tuple[str, str], ...]
    # Exercise 5: RF sweep at equal depth, for each object size (small side) in ex5_smalls.
    ex5_rfs: tuple[int, ...]
    ex5_smalls: tuple[int, ...]
    ex5_depth: int = 5
    # Share of the capped steps that the stopping rule let each exercise's runs take on its design seeds, by
    # exercise (a run two exercises share counts in the first): what the printed time estimate expects. Exercises
    # differ (quick: Exercise 4's heads took 26 % of their caps, Exercise 1's stacks 10 %), so that an estimate for
    # `--only` some of them holds too. Unlisted: 1 (every run to its cap).
    step_shares: tuple[tuple[str, float], ...] = ()
    # Seeds an exercise trains beyond the lab's: where its comparisons need more for power 0.8 at the effects and
    # spreads the design seeds measured (``benchmarks/lab_power.py``). They are the next integers after the lab's
    # largest seed (0, 1, 2 -> 3, 4), so two seed sets share none only if they are that far apart (180 and 190).
    extra_seeds: tuple[tuple[str, int], ...] = ()
    # The wall time the preset is sized for. Where the lab's estimate on the machine it runs on is over it (a
    # slower machine, more seeds), the lab says so before training, with each exercise's own estimate and the
    # exercises that ``--only`` can run within it (runner.over_target). None: no target.
    target_seconds: float | None = None

    def step_share(self, exercise: str) -> float:
        return dict(self.step_shares).get(exercise, 1.0)

    def exercise_seeds(self, exercise: str, seeds: list[int]) -> list[int]:
        """The seeds ``exercise`` trains when the lab's are ``seeds``."""
        extra = dict(self.extra_seeds).get(exercise, 0)
        return [*seeds, *range(max(seeds) + 1, max(seeds) + 1 + extra)]


def aspp_variants(width: int, which: tuple[int, ...] = (0, 1, 2, 3, 4)) -> tuple[tuple[str, str], ...]:
    """Exercise 4's heads (label -> spec): single rates, fused rates, fused rates with image pooling."""
    head = f"aspp_net:width={width},rates="
    variants = (
        ("rate 1", f"{head}1"),
        ("rate 3", f"{head}3"),
        ("rate 6", f"{head}6"),
        ("rates 1,3,6", f"{head}1,3,6"),
        ("rates 1,3,6 + pooling", f"{head}1,3,6,image_pooling=true"),
    )
    return tuple(variants[i] for i in which)


PRESETS = {
    "tiny": Preset(
        name="tiny",
        seeds=1,
        size=32,
        n=48,
        steps=12,
        warmup=2,
        ema=0.9,
        clip_grad=1.0,
        batch_size=8,
        lr=3e-3,
        width=8,
        ex1_flops_size=64,
        ex1_erf_samples=4,
        unet_width=4,
        unet_depth=1,
        max_rate=2,
        min_size=24,
        context="context:front_width=8,scores=norm,act=leaky",
        aspp_width=8,
        deeplab="deeplabv3_small:aspp_channels=16,rates=1,2,3,upsample=nearest",
        scale_small=4,
        scale_large=10,
        ms_size=48,
        ms_variants=aspp_variants(8, (0, 3)),
        ex5_rfs=(5, 9, 17),
        ex5_smalls=(4,),
    ),
    "quick": Preset(
        name="quick",
        seeds=3,
        size=32,
        n=256,
        # 72 epochs of 32 batches of 8: the cap is where a run that has not converged is called so, and only a
        # run still improving reaches it. 24 until session 11 (Exercise 4's rate-3 head gets within 0.01 of where a
        # longer run ends only after 32-40 epochs, audit seeds 42, 51, 52), 48 until session 14: the undilated
        # context module of regime (a) gets within 0.01 of its end at epochs 28-47 on seeds 10, 118, 119, 182,
        # 200, 202 and was still climbing at epoch 48 on check seed 271 (0.88, its end about 0.9); 72 leaves half as
        # much again. Batch 8 at half batch 16's rate (the linear scaling rule, not chosen from results) reached the
        # end of a 72-epoch run in fewer epochs on design seed 10 (BENCHMARKS.md).
        steps=2304,
        warmup=32,
        ema=0.98,
        clip_grad=1.0,
        # Exercises 1, 2, 3, 5 read off runs/lab-design330 (2026-12-03, session 15, the narrow models below): 928,
        # 2,624, 12,000 and 3,840 steps of 9,216, 27,648, 69,120 and 34,560 at the cap (Exercise 3's context
        # module at width 8 then: at 16 its twin takes fewer epochs, so the estimate may run a few per cent high).
        # Exercise 4 (its heads kept at width 16) read off runs/lab-design8 (session 12): 8,832 of 34,560 steps,
        # 3 seeds then.
        step_shares=(("ex1", 0.1007), ("ex2", 0.0949), ("ex3", 0.1736), ("ex4", 0.256), ("ex5", 0.1111)),
        # On the design seeds (runs/lab-design8) five of Exercise 4's six comparisons had power 0.32-0.67 at 3 seeds
        # and needed 4-6 for 0.8; the other ten comparisons had 1.00 (BENCHMARKS.md). 5 seeds meet most of that
        # and keep the lab under 300 s on session 16's machine (216-240 s; not on session 13's slower one).
        extra_seeds=(("ex4", 2),),
        target_seconds=300,
        batch_size=8,
        lr=5e-3,
        # Widths 8 for the conv stacks, Exercise 3's ASPP heads and DeepLab's backbone (session 16; 12-16 before): on
        # one CPU thread a training step at width 12 took as long as at 16 (oneDNN pads channels to blocks of 8),
        # and at 8 26-42 % less (BENCHMARKS.md, session 16). Two model families stay at 16, because at 8 they needed
        # so many more steps that they saved little or no time and converged worse: Exercise 4's heads (166-193 s
        # of training at 8 in runs/lab-design330, -check340, -check350, against 179-188 s at 16 in -check310,
        # -check320; four of their ten runs stopped more than 0.01 below the long run in the audit of seeds 360,
        # 361) and the context module's front end (its jobs took 91-154 s at 8 and 113-154 s at 16 per lab,
        # and at 8 its undilated twin stopped on its slow climb at 0.81 and 0.86 on seeds 382 and 2, where at 16 it
        # ends at 0.90-0.92).
        width=8,
        ex1_flops_size=64,
        ex1_erf_samples=32,
        unet_width=8,
        unet_depth=1,
        max_rate=3,
        min_size=32,
        context="context:front_width=16,scores=norm,act=leaky",
        aspp_width=8,
        deeplab="deeplabv3_small:aspp_channels=16,rates=1,2,3,upsample=nearest,widths=8,16,32,64",
        scale_small=6,
        scale_large=16,
        ms_size=48,
        ms_variants=aspp_variants(16),
        ex5_rfs=(5, 9, 13, 17, 33),
        ex5_smalls=(6,),
    ),
    "full": Preset(
        name="full",
        seeds=5,
        size=64,
        n=200,
        steps=600,
        warmup=16,
        ema=0.98,
        clip_grad=1.0,
        batch_size=16,
        lr=1e-3,
        width=64,
        ex1_flops_size=64,
        ex1_erf_samples=64,
        unet_width=64,
        unet_depth=2,
        max_rate=4,
        min_size=64,
        context="context:front_width=32,scores=norm,act=leaky",
        aspp_width=64,
        deeplab="seed_deeplab",
        scale_small=8,
        scale_large=24,
        ms_size=96,
        ms_variants=aspp_variants(64),
        ex5_rfs=(5, 9, 13, 17, 21, 25, 33, 49, 65, 97, 129),
        ex5_smalls=(4, 8),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise AtrousError(f"unknown lab preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
