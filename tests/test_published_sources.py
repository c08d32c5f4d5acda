"""The published settings' sources and the training scripts' help agree with the cards: every source
names where its value is published or says "ours: <why>", and a help that quotes a published value
quotes the card's."""
from __future__ import annotations

import argparse
import re
from dataclasses import fields
from typing import Any, Iterator

import pytest

import published
from published.settings import DATASETS, PUBLISHED_EVAL, Sourced

# A number as helps and sources write them (0.025, 65,536, 1e-4), not the digits of a name (FC100, ResNet-12, v1).
NUMBER = r"(?<![\w.])(?<![A-Za-z]-)\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?"
# How a help quotes a dataset's values: "CIFAR-FS 0.1", "miniImageNet 0.025, 0.05 or 0.075"; a range, "0.025-0.5",
# reads as its two ends, which no sweep of more than two values matches.
DATASET_VALUES = r"(?<![\w-]){} ({number}(?:(?:, | or | and |-){number})*)"
# The words that make a clause of a help a quotation of a published value.
CITING = re.compile(r"release|official|published|paper|run\.sh")
# The files of each release that a source may name (their trees, when these sources were checked against them).
RELEASE_FILES = {
    "SKD": {"run.sh", "README.md", "train_selfsupervison.py", "train_distillation.py", "eval_fewshot.py",
            "eval/meta_eval.py", "utils/figs/results1.png", "utils/figs/results2.png"},
    "RFS": {"scripts/run.sh", "train_supervised.py", "train_distillation.py", "eval_fewshot.py", "eval/meta_eval.py"},
    "SSKD": {"student.py", "command.sh"},
    "DVP": {"moco/README.md", "moco/main_moco.py", "moco/moco/builder.py", "sup_train_distill/train_selfsup.py"},
}
FILE = re.compile(r"[\w/-]+\.(?:py|sh|md|png)\b")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def numbers(value: Any) -> set[float] | None:
    """A setting's value as the set of numbers it holds (a sweep holds several); None when it is not numeric."""
    values = value if isinstance(value, tuple) else (value,)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return {float(v) for v in values}


@pytest.fixture(scope="module")
def helps() -> dict[str, dict[str, str]]:
    """Each training script's help text by option string."""
    import train_distillation
    import train_supervised_ssl

    parsers: dict[str, argparse.ArgumentParser] = {published.GEN0_SCRIPT: train_supervised_ssl.get_args_parser(),
                                                   published.DISTILL_SCRIPT: train_distillation.get_args_parser()}
    return {script: {option: action.help or "" for action in parser._actions for option in action.option_strings}
            for script, parser in parsers.items()}


def card_settings() -> Iterator[tuple[published.MethodCard, str, str]]:
    """Every card's settings: (card, name, the flag that sets it)."""
    for card in published.cards():
        for name in next(iter(card.published.values())).by_name():
            yield card, name, card.weight_flags.get(name, f"--{name}")


def quoted_per_dataset(help_text: str) -> dict[str, set[float]]:
    """The values `help_text` quotes for each dataset it names with values."""
    found = {}
    for dataset in DATASETS:
        match = re.search(DATASET_VALUES.format(re.escape(dataset), number=NUMBER), help_text)
        if match:
            found[dataset] = {number(n) for n in re.findall(NUMBER, match.group(1))}
    return found


def citing_clauses(help_text: str) -> list[str]:
    """The clauses of `help_text` (split at brackets and semicolons) that quote a published value."""
    return [clause for clause in re.split(r"[()\[\];]", help_text) if CITING.search(clause)]


def test_a_help_quoting_a_datasets_value_quotes_every_datasets_as_the_card(helps):
    for card, name, flag in card_settings():
        quoted = quoted_per_dataset(helps[card.script][flag])
        if not quoted:
            continue
        card_values = {dataset: numbers(settings.by_name()[name].value) for dataset, settings in card.published.items()}
        assert quoted == card_values, (card.name, flag, helps[card.script][flag])


def test_the_gen1_beta_help_states_the_miniimagenet_sweep_and_tieredimagenets_value(helps):
    quoted = quoted_per_dataset(helps[published.DISTILL_SCRIPT]["--gamma"])
    assert quoted == {"CIFAR-FS": {0.1}, "FC100": {0.2}, "miniImageNet": {0.025, 0.05, 0.075}, "tieredImageNet": {0.2}}
    # The help as it was: a range where the card holds three values, and no word on tieredImageNet.
    assert quoted_per_dataset("(official per-dataset values: CIFAR-FS 0.1, FC100 0.2, miniImageNet 0.025-0.5)") \
        == {"CIFAR-FS": {0.1}, "FC100": {0.2}, "miniImageNet": {0.025, 0.5}}


def test_every_number_a_help_cites_is_the_cards_value_or_quoted_by_its_source(helps):
    for card, name, flag in card_settings():
        sourced = [settings.by_name()[name] for settings in card.published.values()]
        backed = {v for s in sourced for v in numbers(s.value) or ()}
        backed |= {number(n) for s in sourced for n in re.findall(NUMBER, s.source)}
        for clause in citing_clauses(helps[card.script][flag]):
            for n in re.findall(NUMBER, clause):
                assert number(n) in backed, (card.name, flag, clause, n)


def every_source() -> Iterator[tuple[str, Sourced]]:
    for card in published.cards():
        for where, settings in [*card.published.items(), ("small scale", card.small_scale)]:
            for name, value in settings.by_name().items():
                yield f"{card.name} {where} {name}", value
    for f in fields(PUBLISHED_EVAL):
        yield f"evaluation {f.name}", getattr(PUBLISHED_EVAL, f.name)


def test_every_source_cites_a_release_paper_or_issue_or_says_ours_with_the_reason():
    for what, value in every_source():
        source = value.source
        if source.startswith("ours"):
            assert re.match(r"ours: \S", source), (what, source)  # a reason follows
            continue
        assert re.search(r"\b(SKD|RFS|SSKD|DVP)\b.*\b(release|paper|recipe)\b|github\.com/", source), (what, source)
        # A choice of ours says so first, whatever it also cites.
        assert not re.search(r"\bours\b|chosen|not published", source), (what, source)
        release = re.search(r"\b(SKD|RFS|SSKD|DVP)\b", source)
        for name in FILE.findall(source):
            assert release and any(f == name or f.endswith(f"/{name}") for f in RELEASE_FILES[release.group(1)]), \
                (what, source, name)

