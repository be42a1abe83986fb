"""``python -m maae``: generate the embedded data, train, evaluate and predict, without Ray."""

from __future__ import annotations

import argparse
import sys
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


def _data_root(path: str | None, seed: int = 0) -> Path:
    if path:
        root = Path(path)
        if not root.is_dir():
            raise MAAEError(f"--data {root}: no such folder (expected a data set in MVTec-AD layout)")
        return root
    from maae.synthetic import embedded_data_root

    return embedded_data_root(seed)


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
    train(config, _data_root(args.data), _categories(args.categories), Path(args.out), resume=args.resume)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from maae.checkpoint import load_run
    from maae.engine import default_device, prepare_data
    from maae.evaluation import evaluate, write_evaluation
    from maae.io import write_json_atomic
    from maae.training import print_progress, run_config_payload, summary_line

    device = default_device()
    run = load_run(Path(args.checkpoint), device)
    categories = _categories(args.categories) or run.categories
    data = prepare_data(run.config, _data_root(args.data), categories, device=device,
                        progress=print_progress, need_train=False)
    if run.config.paradigm == "separate":
        missing = [c for c in data.categories if c not in run.models]
        if missing:
            raise MAAEError(f"--data: categories {missing} have no model in {run.path} "
                            f"(trained on {', '.join(run.categories)})")
    evaluation = evaluate(run.models, data, run.config, device=device)
    out = Path(args.out)
    write_json_atomic(out / "config.json", {**run_config_payload(run.config, data), "checkpoint": str(run.path)})
    write_evaluation(out, evaluation, {"epochs": run.epoch})
    print_progress(f"{summary_line(evaluation)} -> {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from maae.checkpoint import load_run
    from maae.engine import default_device
    from maae.predict import collect_images, predict

    device = default_device()
    run = load_run(Path(args.checkpoint), device)
    images = collect_images([Path(p) for p in args.images])
    frame = predict(run, images, Path(args.out), category=args.category, device=device)
    for row in frame.itertuples():
        print(f"{row.score:10.4f}  {row.path}")
    print(f"{len(frame)} predictions -> {Path(args.out) / 'predictions.csv'}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write the embedded data set (MVTec-AD layout)")
    data.add_argument("--out", required=True)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train MAAE and evaluate it")
    train.add_argument("--data", help="data set in MVTec-AD layout (default: the embedded set)")
    train.add_argument("--categories", help="comma-separated subset of categories")
    train.add_argument("--preset", choices=PRESETS, default="quick")
    train.add_argument("--paradigm", choices=("unified", "separate"))
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved run on a data set")
    evaluate.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    evaluate.add_argument("--data", help="data set (default: the embedded set)")
    evaluate.add_argument("--categories")
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="score images and draw heatmaps")
    predict.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--category", help="which per-category model (separate paradigm only)")
    predict.add_argument("--out", required=True)
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MAAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; the run folder keeps the last finished epoch (use --resume)", file=sys.stderr)
        return 130
    return 0
