"""``python -m maae``: generate the embedded data, train, evaluate and predict, without Ray."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from maae.config import PRESETS, MAAEConfig, parse_set_arguments, preset
from maae.errors import EXIT_USAGE, MAAEError


def _categories(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise MAAEError(f"--categories: expected a comma-separated list of names, got {text!r}")
    return names


def _data_root(path: str | None, seed: int = 0, data_format: str | None = None) -> Path:
    """The data folder (``--data``, or the embedded set), checked against ``--data-format`` when given."""
    if path:
        root = Path(path)
        if not root.is_dir():
            raise MAAEError(f"--data {root}: no such folder (expected a data set in MVTec-AD, VisA or "
                            "Real-IAD layout)")
    else:
        from maae.synthetic import embedded_data_root

        root = embedded_data_root(seed)
    if data_format:
        from maae.data import resolve_data_format

        resolve_data_format(root, data_format)
    return root


def _add_data_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-format", metavar="FORMAT",
                        help="mvtec, visa, realiad or auto (default: detected from the folder's contents)")


def build_config(preset_name: str, paradigm: str | None, overrides: Sequence[str]) -> MAAEConfig:
    """The preset, then ``--paradigm``, then every ``--set key=value``, validated once."""
    values = preset(preset_name).to_dict()
    if paradigm:
        values["paradigm"] = paradigm
    values.update(parse_set_arguments(list(overrides)))
    return MAAEConfig.from_dict(values, source="--set")


def cmd_data(args: argparse.Namespace) -> None:
    from maae.synthetic import generate_dataset

    categories = generate_dataset(Path(args.out), seed=args.seed)
    print(f"wrote {len(categories)} categories ({', '.join(categories)}) to {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    from maae.training import train

    config = build_config(args.preset, args.paradigm, args.set or [])
    train(config, _data_root(args.data, data_format=args.data_format), _categories(args.categories),
          Path(args.out), resume=args.resume)


def cmd_baseline(args: argparse.Namespace) -> None:
    from maae.baseline import baseline_run
    from maae.baseline.config import build_baseline_configs
    from maae.training import print_progress, summary_line

    config, baseline = build_baseline_configs(args.preset, args.set or [])
    result = baseline_run(config, baseline, _data_root(args.data, data_format=args.data_format),
                          _categories(args.categories), Path(args.out), progress=print_progress)
    print_progress(f"baseline: {summary_line(result.evaluation)} ({result.seconds:.0f}s) -> {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from maae.checkpoint import load_run
    from maae.engine import default_device, prepare_data
    from maae.evaluation import evaluate
    from maae.run_folder import write_config, write_metrics
    from maae.training import print_progress, summary_line

    device = default_device()
    run = load_run(Path(args.checkpoint), device)
    categories = _categories(args.categories) or run.categories
    data = prepare_data(run.config, _data_root(args.data, data_format=args.data_format), categories, device=device,
                        progress=print_progress, need_train=False)
    if run.config.paradigm == "separate":
        missing = [c for c in data.categories if c not in run.models]
        if missing:
            raise MAAEError(f"--data: categories {missing} have no model in {run.path} "
                            f"(trained on {', '.join(run.categories)})")
    evaluation = evaluate(run.models, data, run.config, device=device, reference=run.normal_reference)
    out = Path(args.out)
    write_config(out, run.config, data, checkpoint=run.path)
    write_metrics(out, evaluation, epochs=run.epoch)
    print_progress(f"{summary_line(evaluation)} -> {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from maae.calibration import PER_CATEGORY_KEY
    from maae.predict import PREDICTIONS_FILE, collect_images, predict_images, scorer_thresholds

    if args.model:
        from maae.export import load_exported

        scorer = load_exported(Path(args.model), category=args.category)
    else:
        from maae.checkpoint import load_run
        from maae.engine import default_device
        from maae.predict import checkpoint_scorer

        device = default_device()
        scorer = checkpoint_scorer(load_run(Path(args.checkpoint), device), category=args.category, device=device)
    images = collect_images([Path(p) for p in args.images])
    thresholds = scorer_thresholds(scorer, args.category)
    if thresholds is None:
        print(f"note: {args.model or args.checkpoint} has no calibrated threshold (trained with "
              "validation_fraction=0, or before calibration existed): scores only, no verdicts or masks",
              file=sys.stderr)
    elif args.category is None and PER_CATEGORY_KEY in scorer.reference:
        print(f"note: no --category, so the verdicts use the thresholds pooled over the model's categories "
              f"({', '.join(scorer.reference[PER_CATEGORY_KEY])}); --category uses that category's own",
              file=sys.stderr)
    frame = predict_images(scorer, images, Path(args.out), category=args.category)
    for row in frame.itertuples():
        verdict = ("" if thresholds is None else
                   f"  {row.normalised_score:7.3f}  {'anomalous' if row.is_anomalous else 'normal':9s}")
        print(f"{row.score:10.4f}{verdict}  {row.path}")
    summary = f"{len(frame)} predictions"
    if thresholds is not None:
        summary += (f", {int(frame.is_anomalous.sum())} anomalous at the image threshold {thresholds.image:.4g} "
                    f"(calibrated for a false-positive rate of {thresholds.target_fpr:.3g})")
    print(f"{summary} -> {Path(args.out) / PREDICTIONS_FILE}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    from maae.export import export_run

    result = export_run(Path(args.checkpoint), args.format, Path(args.out), category=args.category)
    checked = ("not run here (onnxruntime is not installed)" if result.max_score_difference is None
               else f"differences to PyTorch on a check batch: scores {result.max_score_difference:.2g}, "
                    f"maps {result.max_map_difference:.2g}")
    print(f"exported model {result.model_key} as {result.export_format} -> {result.path} ({checked})",
          file=sys.stderr)


def _one_line_warnings() -> None:
    """Print a data warning (an image converted or enlarged) as one line, like an error (installed once)."""
    original = warnings.showwarning
    if getattr(original, "one_line_data_warnings", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        from maae.data import ImageConversionWarning

        if issubclass(category, ImageConversionWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    show.one_line_data_warnings = True
    warnings.showwarning = show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write the embedded data set (MVTec-AD layout)")
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train MAAE and evaluate it")
    train.add_argument("--data", help="data set in MVTec-AD, VisA or Real-IAD layout (default: the embedded set)")
    _add_data_format(train)
    train.add_argument("--categories", help="comma-separated subset of categories")
    train.add_argument("--preset", choices=PRESETS, default="quick")
    train.add_argument("--paradigm", choices=("unified", "separate"))
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    train.set_defaults(func=cmd_train)

    baseline = sub.add_parser("baseline", help="the nearest-neighbour patch baseline (PatchCore-style)")
    baseline.add_argument("--data", help="data set in MVTec-AD, VisA or Real-IAD layout (default: the embedded set)")
    _add_data_format(baseline)
    baseline.add_argument("--categories", help="comma-separated subset of categories")
    baseline.add_argument("--preset", choices=PRESETS, default="quick", help="chooses backbone and image size")
    baseline.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="a baseline setting (stages, pool_size, coreset_max_patches, ...) or one of "
                               "backbone, backbone_weights, image_size, eval_batch_size, feature_cache")
    baseline.add_argument("--out", required=True, help="run folder")
    baseline.set_defaults(func=cmd_baseline)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved run on a data set")
    evaluate.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    evaluate.add_argument("--data", help="data set (default: the embedded set)")
    _add_data_format(evaluate)
    evaluate.add_argument("--categories")
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="score images and draw heatmaps")
    model = predict.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="run folder or checkpoint.pt")
    model.add_argument("--model", help="a file written by `export` (.onnx: onnxruntime; .pt: TorchScript)")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--category", help="the images' category: picks the model of a separate-paradigm run, "
                                            "and a unified model's thresholds for that category (default: "
                                            "thresholds pooled over its categories)")
    predict.add_argument("--out", required=True)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a run's model as one ONNX or TorchScript graph")
    export.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    export.add_argument("--format", required=True, help="onnx or torchscript")
    export.add_argument("--category", help="which per-category model (separate paradigm only)")
    export.add_argument("--out", required=True, help="the file to write (.onnx or .pt)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        args.func(args)
    except MAAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; the run folder keeps the last finished epoch (use --resume)", file=sys.stderr)
        return 130
    return 0
