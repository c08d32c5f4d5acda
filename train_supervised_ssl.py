"""Generation 0: a network trained from scratch on the training split by one of the methods
registered for this script in methods/, chosen by --objective and a method's own switch (default:
SKD's generation 0, cross-entropy plus the rotation loss). Its checkpoint is the teacher of
train_distillation.py.

This file is wiring only: each method owns its flags, its extra modules, its step and its checks
(`python train_supervised_ssl.py --help` lists them by method).
"""
from __future__ import annotations

import argparse

from published.profiles import DatasetProfile
from models import list_models
import engine.args
import engine.data
import engine.official_flags
import engine.run
import methods
import util

SCRIPT = methods.GEN0_SCRIPT


def get_args_parser() -> argparse.ArgumentParser:
    parser = methods.MethodArgumentParser(script=SCRIPT,
                                          description="SKD generation 0: supervised training with rotation "
                                                      "self-supervision")
    parser.add_argument_group("model").add_argument("--model", default="resnet12_ssl", choices=list_models(),
                                                    help="network architecture")
    methods.add_method_args(parser, SCRIPT)
    engine.args.add_training_script_args(parser, learning_rate=0.05, lr_decay_epochs="60", tags="gen0,ssl")
    engine.official_flags.add_official_flags(parser, SCRIPT)
    return parser


def run_name(args: argparse.Namespace, profile: DatasetProfile) -> str:
    """The official run-folder name: <model>_<dataset>_lr_<lr>_decay_<wd>_trans_<A|D><the method's part>[_cosine]
    _trial_<t> (SKD Gen-0's part is empty)."""
    part = methods.select_method(SCRIPT, args).run_name_part(args)
    return (f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}"
            f"_trans_{profile.transform_letter}{part}{engine.args.run_name_suffix(args)}")


def main() -> None:
    parser = get_args_parser()
    args = parser.parse_args()
    method = methods.select_method(SCRIPT, args)
    config = engine.args.training_config(args, method.device_augment_refusal)
    config, process = engine.run.start_training_run(config, parser.settings)
    method.check_args(args)
    data = engine.data.load_training_data(config)
    run = method.from_args(args, device=process.device, data=data)
    identity = {"model": args.model, "dataset": args.dataset, "image_size": data.image_size}
    methods.train(run, config=config, process=process, data=data, name=run_name(args, data.profile),
                  identity=identity)


if __name__ == "__main__":
    util.run_cli(main)
