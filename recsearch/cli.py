"""The ``recsearch`` command. Each subcommand takes Hydra overrides after its name:

    recsearch data info data=ml-100k
    recsearch train model=mf data=ml-100k task=rating out=runs/mf
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

    fetch_command(args.name, args.dest)


def _train(args) -> None:
    from recsearch.training import train_command

    train_command(load_config(args.overrides))


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
    fetch.set_defaults(run=_data_fetch)

    train = commands.add_parser("train", help="train and evaluate one configuration")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=mf data=ml-100k")
    train.set_defaults(run=_train)
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
