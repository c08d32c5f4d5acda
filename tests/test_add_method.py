"""docs/methods.md's "Adding a method" walk-through, run as written: each of the page's example files
(a python block under `<!-- example file: PATH -->`) is loaded as the module PATH names, the method it
defines is registered as the page's two edits register it, and it is selected, checked and trained one
step through its class's public API, so the page fails here when it drifts from the code. Nothing in
this file names the example: the page may change it."""
from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import fields

import pytest
import torch

import methods
import methods.registry
from conftest import REPO
from method_runs import build_run, script_parser, tiny_command_line, training_batch
from published.cards import add_cards, cards

# The module itself: the package's attribute `published.cards` is the function cards(), which shadows it.
CARDS_MODULE = importlib.import_module("published.cards")

PAGE = REPO / "docs" / "methods.md"
EXAMPLE_FILE = re.compile(r"^<!-- example file: (\S+\.py) -->\n```python\n(.*?)^```", re.S | re.M)


def example_files() -> dict[str, str]:
    """The page's example files, path -> source, in page order (a card before the class importing it)."""
    return dict(EXAMPLE_FILE.findall(PAGE.read_text()))


@pytest.fixture
def example() -> Iterator[type[methods.Method]]:
    """The page's method, registered for one test. The registries have no way to remove an entry (they
    are filled once, at import), so the entries added here are deleted from them after the test."""
    files = example_files()
    assert {path.split("/")[0] for path in files} == {"published", "methods"}, "the page shows a card and a class"
    registered, carded = set(methods.method_names()), {card.name for card in cards()}
    loaded = []
    try:
        for path, source in files.items():
            module = types.ModuleType(path.removesuffix(".py").replace("/", "."))
            sys.modules[module.__name__] = module  # imported by the files after it, read by @dataclass
            loaded.append(module.__name__)
            exec(compile(source, f"{PAGE} ({path})", "exec"), module.__dict__)
        added = [name for name in methods.method_names() if name not in registered]
        assert len(added) == 1, f"the page's files register {added}, not one method"
        method = methods.get_method(added[0])
        add_cards(method.card)  # the page's edit of published/__init__.py
        yield method
    finally:
        for name in loaded:
            del sys.modules[name]
        for name in set(methods.method_names()) - registered:
            methods.registry.METHODS.unregister(name)
        for name in {card.name for card in cards()} - carded:
            CARDS_MODULE.CARDS.unregister(name)


def test_the_pages_example_method_trains_one_step(example):
    parser = script_parser(example)
    args = parser.parse_args(tiny_command_line(example))
    assert methods.select_method(example.script, args) is example  # its --objective, through its card
    read = {f.name for f in fields(example.Values)}
    assert set(example.own_flags(parser.owners)) | set(example.shared_flags) <= read  # each flag reaches the run
    example.check_args(args)  # as the script does before training
    assert isinstance(example.run_name_part(args), str)  # the script names the run folder with it

    torch.manual_seed(0)
    run = build_run(example, args)
    optimizer = torch.optim.SGD([*run.model.parameters(), *run.extra_parameters()], lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = run.make_step(None, None)(*training_batch(run.data, 8))
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    assert torch.isfinite(result.loss) and all(torch.isfinite(v) for v in result.metrics.values())
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.endswith(".weight") for k in changed)  # the step trained the network
    run.check_frozen()  # and left the teacher as it was


def test_the_pages_example_method_defaults_to_its_cards_settings(example):
    dataset, settings = next((d, s) for d, s in example.published.items()
                             if not any(isinstance(w.value, tuple) for w in s.weights.values()))  # no sweep to give
    parser = script_parser(example)
    args = parser.parse_args([*tiny_command_line(example), "--dataset", dataset])
    assert args.epochs == settings.epochs.value and args.learning_rate == settings.learning_rate.value
    dests = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    for name, flag in example.weight_flags.items():
        assert getattr(args, dests[flag]) == settings.weights[name].value, flag
