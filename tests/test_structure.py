"""The code's structure as the design states it (issue 39): the command line read at the scripts' boundary only,
no function with more than 6 positional parameters, folders that import no floor they do not need, one registry
per part that every choice reads, and a training run that needs no parser."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import engine.data
import methods
import runtime.distributed
import util
from engine.config import DataConfig, LoopConfig, RunConfig, Schedule, TrainConfig
from eval.fewshot import EvalConfig
from methods.base import RunSetting
from runtime.process import Process

REPO = Path(__file__).resolve().parents[1]
# Below the scripts: nothing here takes or reads the command line...
BELOW_THE_SCRIPTS = ("engine", "eval", "runtime", "models", "dataset", "distill", "util.py", "methods")
# ...except the parsers and the `python -m` entry points, which turn it into values,
PARSERS_AND_ENTRY_POINTS = {"engine/args.py", "engine/official_flags.py", "methods/registry.py", "eval/table.py",
                            "dataset/prepare.py", "dataset/check.py"}
# and a method's own command-line members (methods/base.py: its flags, their checks, its run-name part, from_args).
METHOD_COMMAND_LINE = {"add_args", "own_flags", "check_given", "check_args", "run_name_part", "from_args",
                       "dropblock_mask_of", "BeforePublished"}


def project_files(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        path = REPO / root
        out += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return out


def functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def takes_the_command_line(function: ast.FunctionDef) -> bool:
    """A parameter annotated as an argparse.Namespace, or named as one (args, opt)."""
    params = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return any((p.annotation is not None and "Namespace" in ast.unparse(p.annotation)) or p.arg in ("args", "opt")
               for p in params)


def test_nothing_below_the_scripts_takes_the_command_line():
    files = project_files(*BELOW_THE_SCRIPTS)
    assert len(files) > 60  # the walk found the package files
    found = [f"{path.relative_to(REPO)}:{f.lineno} {f.name}" for path in files
             if str(path.relative_to(REPO)) not in PARSERS_AND_ENTRY_POINTS
             for f in functions(path) if takes_the_command_line(f) and f.name not in METHOD_COMMAND_LINE]
    assert found == []


def test_the_check_sees_a_function_taking_the_command_line():
    tree = ast.parse("import argparse\ndef f(x: argparse.Namespace): pass\ndef g(args): pass\ndef h(*args): pass\n")
    assert [takes_the_command_line(f) for f in tree.body[1:]] == [True, True, False]


def test_no_function_takes_more_than_six_positional_parameters():
    # The repository's own files (git's list), never a virtualenv's inside the clone (`python -m venv .venv`).
    files = [p for p in util.source_files() if "tests" not in p.relative_to(REPO).parts]
    assert len(files) > 80
    found = [f"{path.relative_to(REPO)}:{f.lineno} {f.name}" for path in files for f in functions(path)
             if len([a for a in (*f.args.posonlyargs, *f.args.args) if a.arg not in ("self", "cls")]) > 6]
    assert found == []


def imports_of(folder: str) -> set[str]:
    """The project's top-level packages and modules the files of `folder` import."""
    names = set()
    for path in project_files(folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder, not_imported", [("runtime", {"models", "dataset", "eval", "engine", "methods"}),
                                                  ("models", {"dataset", "eval", "engine", "methods", "runtime"}),
                                                  ("dataset", {"models", "eval", "engine", "methods"}),
                                                  ("eval", {"engine", "methods"})])
def test_a_folder_imports_no_floor_it_does_not_need(folder, not_imported):
    assert imports_of(folder) & not_imported == set()


def test_every_registered_model_provides_the_backbone_contract():
    from models import MODELS, Backbone, create_model

    assert MODELS.names()
    for name in MODELS.names():
        model = create_model(name, 5, "synthetic").eval()
        assert isinstance(model, Backbone), name
        out = model.forward_all(torch.zeros(2, 3, 32, 32))
        assert out.feature.shape == (2, model.feature_dim) and out.logits.shape == (2, model.num_classes), name
        assert out.rot_logits.shape == (2, 4), name
        maps, logits = model.forward_preactivations(torch.zeros(2, 3, 32, 32))
        assert [m.shape[1] for m in maps] == [bn.num_features for bn in model.preactivation_batchnorms()], name
        assert torch.equal(logits, out.logits), name


def choices(parser, dest: str) -> list[str]:
    return list(next(a for a in parser._actions if a.dest == dest).choices)


def test_every_choice_is_what_its_registry_holds():
    import eval_fewshot
    import train_distillation
    import train_supervised_ssl
    from dataset import DATASETS
    from eval.classifiers import CLASSIFIERS
    from models import list_models
    from tools import classify

    assert choices(eval_fewshot.get_args_parser(), "classifier") == CLASSIFIERS.names()
    assert choices(classify.get_args_parser(), "classifier") == CLASSIFIERS.names()
    for script in (train_supervised_ssl, train_distillation):
        assert choices(script.get_args_parser(), "dataset") == DATASETS.names()
    assert choices(train_supervised_ssl.get_args_parser(), "model") == list_models()
    assert set(choices(train_supervised_ssl.get_args_parser(), "objective")) == {
        m.objective for m in methods.methods_of_script(methods.GEN0_SCRIPT)}


def test_a_registry_refuses_an_unknown_name_in_one_line_naming_what_it_holds():
    from eval.classifiers import CLASSIFIERS, classify

    with pytest.raises(KeyError, match=r"unknown classifier 'SVM'; registered: LR, NN, Cosine, sklearn"):
        classify("SVM", torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.zeros(1, 1, 3), 2)
    with pytest.raises(ValueError, match="registered twice"):
        CLASSIFIERS.register("LR", lambda *a: None)


def test_a_gen0_epoch_and_its_evaluation_run_from_values_with_no_parser(tmp_path):
    """The whole training path below the scripts, from hand-built values: one Gen-0 epoch, its checkpoint and
    the final report's results."""
    config = TrainConfig(schedule=Schedule(epochs=1, learning_rate=0.02), seed=3,
                         data=DataConfig("synthetic", image_size=16, batch_size=32),
                         loop=LoopConfig(log_interval=5), run=RunConfig(model_path=str(tmp_path)),
                         episodes=EvalConfig(n_queries=5, n_episodes=3, n_aug=2), flags={"note": "values only"})
    process = Process(runtime.distributed.Distributed(), torch.device("cpu"), "off", "cpu")
    data = engine.data.load_training_data(config)
    method = methods.get_method("skd_gen0")
    run = method(values=method.Values(gamma=2.0), device=process.device, data=data,
                 setting=RunSetting(model="resnet12_ssl_narrow", dataset="synthetic", bn_stats="global",
                                    dropblock_mask="full", seed=3))
    methods.train(run, config=config, process=process, data=data, name="gen0", identity={"model": "narrow"})
    checkpoint = torch.load(tmp_path / "gen0" / "checkpoint.pth", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["args"] == {"note": "values only"}
    results = json.loads((tmp_path / "gen0" / "results.json").read_text())["results"]
    assert {(r["split"], r["n_shots"], r["embedding"]) for r in results} == {
        (split, shots, emb) for split in ("val", "test") for shots in (1, 5) for emb in ("feature", "logit")}
    assert all(r["n_episodes"] == 3 and 0 <= r["mean"] <= 100 for r in results)
