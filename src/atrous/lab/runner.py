"""``atrous lab``: collect every exercise's training jobs, run them in parallel, then write one report."""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from atrous.errors import AtrousError
from atrous.fileio import write_atomic
from atrous.lab import (
    audit,
    calibrate,
    convergence,
    ex1_receptive_fields,
    ex2_unets,
    ex3_aspp,
    ex4_multiscale,
    ex5_rf_accuracy,
    registration,
    stats,
)
from atrous.lab.jobs import Job, run_jobs, worker_pool
from atrous.lab.presets import Preset, get_preset
from atrous.lab.report import write_report

EXERCISES = {m.KEY: m for m in (ex1_receptive_fields, ex2_unets, ex3_aspp, ex4_multiscale, ex5_rf_accuracy)}


def parse_seeds(seeds: str | int | None, default: int) -> list[int]:
    if seeds is None:
        return list(range(default))
    text = str(seeds)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]  # "41," is a list of one seed
    except ValueError:
        values = []
    if not values:
        raise AtrousError(f"--seeds {text!r}: give a count (3) or a list (0,1,2; one seed: 41,)")
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise AtrousError("--seeds must be >= 1")
        return list(range(values[0]))
    if len(set(values)) < len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise AtrousError(f"--seeds {text!r} repeats seed {twice[0]}: give each seed once")
    return values


def default_workers(device: str) -> int:
    """CPU: one single-threaded process per core. GPU: small models leave most of the card idle, so several
    processes share it (each with its own CUDA context, about 0.5 GB), fed by the CPU's cores."""
    cores = os.cpu_count() or 1
    return min(2, cores) if device == "cpu" else max(2, min(8, cores))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def step_shares(p: Preset, planned: dict[str, list[Job]], keys: list[str]) -> dict[str, float]:
    """Each run's expected share of its step cap, by ``Job.key``: a run that several of ``keys`` share counts in
    the first of them, as the shares were read off."""
    shares: dict[str, float] = {}
    for key in sorted(keys, key=list(EXERCISES).index):
        shares.update({j.key: p.step_share(key) for j in planned[key] if j.key not in shares})
    return shares


def expected_after_start(
    p: Preset,
    planned: dict[str, list[Job]],
    keys: list[str],
    speeds: dict[str, calibrate.Speed],
    workers: int,
) -> float:
    """The estimate of training and report if the lab ran only the exercises ``keys``: a run they share is
    trained once, at the share of the first of them (``step_shares``), as an ``--only`` run would model it."""
    unique = {j.key: j for key in keys for j in planned[key]}
    return calibrate.expected_seconds(
        list(unique.values()), speeds, workers, step_shares(p, planned, keys), report=True
    )


# The share of the target an ``--only`` set may be expected to take to be suggested: room for an estimate 11 %
# short of the wall time. The lab's estimates were up to 9 % short in sessions 14-17 and up to 12 % in session 13
# (BENCHMARKS.md); a set suggested at 300 s of a 300 s target before this margin took 301 s (session 17).
FIT_MARGIN = 0.9


def over_target(p: Preset, chosen: list[str], before: float, training: Callable[[list[str]], float]) -> str:
    """What to say when the lab's estimate on this machine is over the preset's target: the time before
    training, each exercise's own estimate of training and report (``training``: of a set of exercises), and the
    largest set of them that ``--only`` runs within ``FIT_MARGIN`` of the target, at ``before`` plus its own
    estimate (an ``--only`` run times fewer models before it trains, so its time before training is shorter)."""
    target = p.target_seconds
    assert target is not None, "over_target needs a preset with a target"
    alone = ", ".join(f"{key} {training([key]):.0f} s" for key in chosen)
    subsets = [list(c) for r in range(len(chosen) - 1, 0, -1) for c in itertools.combinations(chosen, r)]
    fits = [(len(c), t, c) for c in subsets if (t := before + training(c)) <= FIT_MARGIN * target]
    line = (
        f"that is over the {p.name} preset's {target:.0f} s target on this machine ({before:.0f} s before "
        f"training, then each exercise alone: {alone})"
    )
    if not fits:
        return line
    _, total, best = max(fits, key=lambda f: f[:2])
    return f"{line}; adding --only {','.join(best)} fits it (about {total:.0f} s)"


def run_lab(
    preset: str = "quick",
    out: str | Path = "runs/lab",
    only: str | None = None,
    seeds: str | None = None,
    workers: int | None = None,
    console: Console | None = None,
    device: str = "cpu",
) -> dict[str, Path]:
    console = console or Console()
    chosen = choose(only)
    p = get_preset(preset)
    seed_list = parse_seeds(seeds, p.seeds)
    workers = workers if workers is not None else default_workers(device)
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds_of = {key: p.exercise_seeds(key, seed_list) for key in chosen}
    planned = {key: EXERCISES[key].jobs(p, seeds_of[key]) for key in chosen}
    jobs = [j for key in chosen for j in planned[key]]
    digest = registration.register(run_dir, design(p, seed_list, seeds_of))
    console.print(
        f"predictions registered before training: {run_dir / registration.FILE} (sha256 {digest})",
        soft_wrap=True,
    )
    with worker_pool(workers) as pool:
        speeds = calibrate.measure(jobs, workers, device, pool)
        jobs = calibrate.longest_first(jobs, speeds)
        # Everything so far (the design's RF analyses, the calibration) is measured; the rest is modelled.
        started = time.perf_counter() - start

        def training(keys: list[str]) -> float:
            return expected_after_start(p, planned, keys, speeds, workers)

        estimate = started + training(chosen)
        shares = step_shares(p, planned, chosen)
        at_cap = calibrate.expected_seconds(jobs, speeds, workers)
        console.print(
            f"lab {preset}: {len(jobs)} training runs on {workers} "
            f"{'processes' if workers > 1 else 'process'}; expected about {estimate:.0f} s in all on this "
            f"machine, from timing its {len(speeds)} models just now (at most {at_cap:.0f} s of training if "
            "every run goes to its step cap)",
            soft_wrap=True,
        )
        if p.target_seconds is not None and estimate > p.target_seconds:
            console.print(over_target(p, chosen, started, training), soft_wrap=True)
        forecast = calibrate.Forecast(jobs, speeds, workers, shares, start)
        results = _train(jobs, run_dir, workers, device, console, f"lab {preset}", pool, forecast)
    registered = registration.read_back(run_dir, digest)["exercises"]
    sections, report_seconds = [], {}
    for key in chosen:
        t0 = time.perf_counter()
        sections.append(EXERCISES[key].section(p, seeds_of[key], results, run_dir, registered[key]))
        report_seconds[key] = time.perf_counter() - t0
    meta = {
        "preset": preset,
        "device": device_name(device),
        "exercises": chosen,
        "seeds": seed_list,
        "exercise_seeds": seeds_of,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "predictions_sha256": digest,
        "health": health_counts(results),
    }
    header = (
        f"Preset {preset}; exercises {', '.join(chosen)}; seeds {seed_list}{more_seeds(seeds_of, seed_list)}; "
        f"torch {torch.__version__}; "
        f"trained on {device_name(device)}; every run: batch {p.batch_size}, AdamW lr {p.lr} after {p.warmup} "
        f"warm-up steps, gradients clipped at norm {p.clip_grad:g}, at most {p.steps} steps. "
        "Every number below was computed in this run. The predictions were "
        f"registered before training in {registration.FILE}, sha256 {digest}. Runs: {health_line(results)}."
    )
    paths = write_report(sections, run_dir, header, meta)
    # Measured speeds vary from run to run: kept out of results.json so that it is reproducible.
    timings = breakdown(planned, results, report_seconds)
    timings.update(
        expected_seconds=estimate,
        expected_at_cap=at_cap,
        before_training_seconds=started,
        expected_at_quarter=forecast.at_quarter,
        calibration={f"{k.model} on {k.data}": asdict(speeds[k.key]) for k in map(calibrate.kind, jobs)},
        workers=workers,
        wall_seconds=time.perf_counter() - start,
    )
    write_atomic(run_dir / "timings.json", json.dumps(timings, indent=2) + "\n")
    console.print(
        f"report: {paths['html']} ({paths['md'].name}, {paths['json'].name}); {timings['wall_seconds']:.0f} s"
    )
    return paths


def audit_lab(
    preset: str = "quick",
    out: str | Path = "runs/lab-audit",
    only: str | None = None,
    seeds: str | None = None,
    workers: int | None = None,
    console: Console | None = None,
    device: str = "cpu",
) -> dict:
    """The convergence audit (``atrous lab --audit``) of a preset's configurations, on seeds it does not
    report."""
    console = console or Console()
    chosen = choose(only)
    p = get_preset(preset)
    # A count means the first audit seeds (40, 41, ...); a list is taken as given.
    first = audit.AUDIT_SEEDS[0]
    count = [first + i for i in parse_seeds(seeds, len(audit.AUDIT_SEEDS))]
    seed_list = parse_seeds(seeds, 0) if seeds is not None and "," in str(seeds) else count
    reported = {s for key in EXERCISES for s in p.exercise_seeds(key, list(range(p.seeds)))}
    if reported & set(seed_list):
        raise AtrousError(
            f"--seeds {','.join(map(str, seed_list))}: the audit must not use the seeds the preset reports "
            f"({sorted(reported)}); give others, e.g. {','.join(map(str, audit.AUDIT_SEEDS))}"
        )
    jobs = [j for key in chosen for j in EXERCISES[key].jobs(p, seed_list)]
    workers = workers if workers is not None else default_workers(device)
    with worker_pool(workers) as pool:
        speeds = calibrate.measure(jobs, workers, device, pool)
        jobs = calibrate.longest_first(jobs, speeds)
        # The long runs have no stopping rule: each takes all its steps, so the estimate is the whole cost.
        expected = calibrate.expected_seconds([audit.long_job(j) for j in jobs], speeds, workers)
        console.print(
            f"lab audit {preset}: {len(jobs)} runs (the configurations x seeds {seed_list}), each trained "
            f"{audit.FACTOR}x its step cap ({audit.FACTOR * p.steps} steps) on {workers} processes; expected "
            f"about {expected:.0f} s on this machine",
            soft_wrap=True,
        )
        return audit.run_audit(p, jobs, Path(out), workers, console, device, pool)


def choose(only: str | None) -> list[str]:
    chosen = list(EXERCISES) if not only else [e.strip() for e in only.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXERCISES]
    if unknown:
        raise AtrousError(f"unknown exercise {unknown[0]!r} in --only; available: {', '.join(EXERCISES)}")
    return chosen


def more_seeds(seeds_of: dict[str, list[int]], seeds: list[int]) -> str:
    """The report header's note on the exercises that train more seeds than the lab's, or ""."""
    more = [f"{key}: {s}" for key, s in seeds_of.items() if s != seeds]
    if not more:
        return ""
    return f" ({'; '.join(more)}: more seeds where the comparisons need them for power {stats.POWER})"


def design(p: Preset, seeds: list[int], seeds_of: dict[str, list[int]]) -> dict:
    """What predictions.json registers: the training protocol, the decision rules, and each exercise's design
    and predictions."""
    return {
        "preset": asdict(p),
        "seeds": seeds,
        "exercise_seeds": seeds_of,
        "training": {
            "steps_cap": p.steps,
            "warmup": p.warmup,
            "lr": p.lr,
            "batch_size": p.batch_size,
            "clip_grad": p.clip_grad,
        },
        "rules": {
            "stopping": convergence.RULE,
            "verdicts": stats.VERDICT_RULES,
            "margin": stats.RELEVANT,
            "alpha": stats.ALPHA,
            "power": stats.POWER,
        },
        "exercises": {key: EXERCISES[key].predictions(p, s) for key, s in seeds_of.items()},
    }


def health_counts(results: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["health"]] = counts.get(r["health"], 0) + 1
    return dict(sorted(counts.items()))


def health_line(results: dict) -> str:
    return ", ".join(f"{n} {state}" for state, n in health_counts(results).items())


def _train(
    jobs: list[Job],
    run_dir: Path,
    workers: int,
    device: str,
    console: Console,
    what: str,
    pool: Executor | None = None,
    forecast: calibrate.Forecast | None = None,
) -> dict:
    """Run the jobs with a progress bar in a terminal, and one line per finished run elsewhere (a pipe, a log
    file, CI), so that a long run is never silent; with a ``forecast``, each says how long is left."""

    def left(job: Job, result: dict) -> str:
        if forecast is None:
            return ""
        forecast.finish(job, result)
        return f"; about {forecast.seconds_left():.0f} s left"

    def line(job: Job, result: dict, count: int, total: int) -> None:
        val, secs = result["final"]["miou"], result["timing"]["job_seconds"]
        console.print(
            f"[{count}/{total}] {job.label}: val mIoU {val:.3f} after {result['steps']} steps ({secs:.1f} s)"
            + left(job, result),
            soft_wrap=True,
        )

    if not console.is_terminal:
        return run_jobs(jobs, run_dir / "runs", workers, line, device, pool)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{what}: training", total=len(jobs))

        def done(job: Job, result: dict, count: int, total: int) -> None:
            bar.update(task, completed=count, description=f"{what}: done {job.label}{left(job, result)}")

        return run_jobs(jobs, run_dir / "runs", workers, done, device, pool)


def breakdown(planned: dict[str, list[Job]], results: dict, report_seconds: dict[str, float]) -> dict:
    """Where the time went, per exercise: its training runs (a run shared by several exercises is counted in the
    first), the building of its section (ERFs, RF analyses, figures), and every run's own numbers."""
    counted: set[str] = set()
    per_exercise = {}
    for key, jobs in planned.items():
        own = [j.key for j in {j.key: j for j in jobs}.values() if j.key not in counted]
        counted.update(own)
        per_exercise[key] = {
            "runs": len(own),
            "run_seconds": sum(results[k]["timing"]["job_seconds"] for k in own),
            "steps": sum(results[k]["steps"] for k in own),
            "section_seconds": report_seconds.get(key, 0.0),
        }
    runs = {r["job"]["label"] or k: {"steps": r["steps"], **r["timing"]} for k, r in results.items()}
    return {"exercises": per_exercise, "runs": runs}
