"""``harness sample RUN_DIR --n N --out DIR``: export labelled samples of a trained run.

A folder of PNG files (images) or a ``samples.npz`` (``x``, ``y``; 2-D points, or images)
from the run's evaluation generator, for clean-fid, torch-fidelity or any other tool; the
protocol (labels, latents, conversion to uint8) is ``harness.sampling``'s.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

MAX_SAMPLES = 10_000_000


def add_parser(commands: Any) -> None:
    from harness.cli import int_arg, path_arg

    sample = commands.add_parser(
        "sample", help="export labelled samples of a trained run (PNG folder or .npz)",
        description="Write N samples of the run's evaluation generator (the EMA copy when it "
        "has one) into a new folder: PNG files (images, uint8 exactly as the FID metrics "
        "convert them) with labels.csv, or samples.npz with arrays x and y; samples.json "
        "records the run, checkpoint and its step, seed and label counts. Labels y ~ P(c) of the "
        "run's conditioner, or N/K per class with --per-class.",
        epilog="FID of the folder with torch-fidelity: fidelity --fid --input1 DIR --input2 "
        "REFERENCE (add --samples-find-deep for --per-class folders).",
    )
    sample.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a run directory")
    sample.add_argument("--n", type=int_arg(1, MAX_SAMPLES), default=50_000, metavar="N",
                        help="number of samples (default: 50000)")
    sample.add_argument("--out", type=path_arg, required=True, metavar="DIR",
                        help="a new or empty folder to write them into")
    sample.add_argument("--format", choices=["png", "npz"],
                        help="png (images only) or npz (default: png for images, npz for "
                        "points)")
    sample.add_argument("--per-class", action="store_true",
                        help="N/K samples of each of the K classes (png: one subfolder per "
                        "class) instead of labels drawn from P(c)")
    sample.add_argument("--checkpoint", default="last", metavar="last|best|STEP",
                        help="last (default), best (--best-metric) or the step of a kept "
                        "checkpoint (--keep-checkpoints)")
    sample.add_argument("--seed", type=int_arg(0, 2**62), metavar="S",
                        help="draw the samples the evaluation of a run of seed S draws "
                        "(default: the run's seed: exactly the samples harness eval "
                        "--eval-samples N scores)")
    sample.add_argument("--batch-size", type=int_arg(1, 100_000), default=10_000,
                        metavar="B", help="samples per forward pass of G (default: 10000, "
                        "the evaluation's; another changes G's output only in the last bits)")
    sample.add_argument("--device", choices=["cpu", "cuda", "auto"],
                        help="where to run G (default: the run's device)")
    sample.add_argument("--data-root", type=path_arg,
                        help="folder of file-backed datasets (default: the run's)")
    sample.add_argument("--threads", type=int_arg(1, 1024), help="torch CPU threads")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(handler=command_sample)


def command_sample(args: argparse.Namespace) -> int:
    from harness import restore, sampling
    from harness.errors import HarnessError

    what, directory = "harness sample", args.run_dir
    sampling.check_out(args.out, what)
    restore.read_saved_config(directory, what)
    overrides = {name: getattr(args, name) for name in ("device", "data_root", "threads")
                 if getattr(args, name) is not None}
    checkpoint = restore.generator_source(directory, args.checkpoint, what)
    run = restore.load_generator(directory, args.checkpoint, overrides, what)
    fmt = sampling.check_format(run, args.format, what)
    seed = run.config.seed if args.seed is None else args.seed
    try:
        labels = sampling.draw_labels(run.conditioner, args.n, seed, args.per_class)
    except ValueError:
        classes = run.conditioner.num_classes
        low = args.n // classes * classes
        nearest = ", ".join(str(v) for v in (low, low + classes) if v > 0)
        raise HarnessError(f"{what} --n {args.n} --per-class: not a multiple of the run's "
                           f"{classes} classes (valid: a multiple of {classes}, e.g. "
                           f"{nearest})") from None
    sampling.check_resources(run, args.out, args.n, fmt, args.batch_size, what)
    manifest = sampling.export(run, args.out, labels, seed, fmt, args.per_class,
                               args.batch_size, show_progress=not args.no_progress,
                               checkpoint=checkpoint.relative_to(directory))
    print(f"wrote {args.n} samples ({fmt}) of {directory} at step {manifest['checkpoint_step']} "
          f"(seed {seed}, {'the EMA generator' if manifest['generator'] == 'ema' else 'G'}) to "
          f"{args.out}")
    print(f"manifest: {args.out / sampling.MANIFEST}", file=sys.stderr)
    return 0
