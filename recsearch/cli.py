"""The ``recsearch`` command. Each subcommand takes Hydra overrides after its name:

    recsearch data info data=ml-100k
    recsearch train model=mf data=ml-100k task=rating out=runs/mf
    recsearch cv model=mf data=ml-100k task=rating data.split.folds=5 out=runs/mf-cv
    recsearch sweep model=ncf data=ml-100k search.num_samples=64 out=runs/ncf
    recsearch resume runs/ncf
    recsearch report runs/ncf
    recsearch serve runs/ncf
    recsearch export runs/ncf runs/ncf-int8 --precision int8
    recsearch submit --address http://127.0.0.1:8265 model=mf out=/mnt/shared/sweeps/mf
    recsearch dashboards
"""

from __future__ import annotations

import argparse
import sys

from recsearch.config import load_config
from recsearch.errors import RecsearchError


def _data_info(args) -> None:
    from recsearch.data.info import info_command

    info_command(load_config(args.overrides))


def _data_fetch(args) -> None:
    from recsearch.data.fetch import fetch_command

    fetch_command(args.name, args.dest, sha256=args.sha256)


def _train(args) -> None:
    from recsearch.training import train_command

    train_command(load_config(args.overrides))


def _cv(args) -> None:
    from recsearch.crossval import cv_command

    cv_command(args.overrides)


def _sweep(args) -> None:
    from recsearch.tuning.sweep import sweep_command

    sweep_command(args.overrides)


def _resume(args) -> None:
    from recsearch.tuning.sweep import resume_command

    resume_command(args.directory)


def _report(args) -> None:
    from recsearch.tuning.outputs import report_command

    report_command(args.directory)


def _submit(args) -> None:
    from recsearch.tuning.submit import submit_command

    submit_command(args.overrides, args.address, args.python, args.working_dir, wait=not args.no_wait)


def _dashboards(args) -> None:
    from recsearch.telemetry.grafana import dashboards_command

    dashboards_command(args.session)


def _serve(args) -> None:
    from recsearch.serving.cli import serve_command

    serve_command(args)


def _export(args) -> None:
    from recsearch.serving.export import export_command

    export_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsearch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect or download datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="users, items, interactions, density and split sizes")
    info.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=ml-100k")
    info.set_defaults(run=_data_info)
    fetch = data_commands.add_parser("fetch", help="download a MovieLens dataset from GroupLens (checksummed)")
    fetch.add_argument("name", choices=["ml-100k", "ml-1m"])
    fetch.add_argument("--dest", default="data", help="folder to unpack into (default: data/)")
    fetch.add_argument("--sha256", help="expected checksum of the archive (default: the one pinned in recsearch)")
    fetch.set_defaults(run=_data_fetch)

    train = commands.add_parser("train", help="train and evaluate one configuration")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=mf data=ml-100k")
    train.set_defaults(run=_train)
    cv = commands.add_parser("cv", help="k-fold cross-validation of one configuration: mean ± std over folds")
    cv.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=mf task=rating data.split.folds=5")
    cv.set_defaults(run=_cv)

    from recsearch.serving.cli import add_arguments as add_serve_arguments

    serve = commands.add_parser("serve", help="serve a trained model over HTTP with Ray Serve")
    add_serve_arguments(serve)
    serve.set_defaults(run=_serve)

    from recsearch.serving.export import add_arguments as add_export_arguments

    export = commands.add_parser("export", help="write a model's serving bundle, optionally in fp16/int8 or pruned")
    add_export_arguments(export)
    export.set_defaults(run=_export)

    sweep = commands.add_parser("sweep", help="search hyperparameters with Ray Tune; rank, test and export the best")
    sweep.add_argument("overrides", nargs="*",
                       help="Hydra overrides, e.g. model=mf search.num_samples=32 (or search.models=[mf,lstm])")
    sweep.set_defaults(run=_sweep)
    resume = commands.add_parser("resume", help="continue a killed or interrupted sweep")
    resume.add_argument("directory", help="the sweep's folder (its out=)")
    resume.set_defaults(run=_resume)
    report = commands.add_parser("report", help="print a sweep's leaderboard and write report.html")
    report.add_argument("directory", help="the sweep's folder (its out=)")
    report.set_defaults(run=_report)
    submit = commands.add_parser("submit", help="run a sweep as a Ray Job on a running cluster")
    submit.add_argument("--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--python", help="the cluster's Python with recsearch installed "
                                         "(default: the `recsearch` command on the nodes' PATH)")
    submit.add_argument("--working-dir", metavar="DIR",
                        help="ship this recsearch checkout (code and conf/) with the job: local edits run as edited")
    submit.add_argument("--no-wait", action="store_true", help="return once submitted instead of following its logs")
    submit.add_argument("overrides", nargs="*", help="Hydra overrides, as for sweep")
    submit.set_defaults(run=_submit)
    dashboards = commands.add_parser("dashboards", help="install recsearch's Grafana dashboards into a running "
                                                        "Ray head's Grafana provisioning")
    dashboards.add_argument("--session", help="the head's Ray session folder (default: /tmp/ray/session_latest)")
    dashboards.set_defaults(run=_dashboards)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cfg and hasattr(args, "overrides"):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(load_config(args.overrides)))
            return 0
        args.run(args)
    except (RecsearchError, FileNotFoundError) as err:
        print(f"recsearch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
