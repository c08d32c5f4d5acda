"""pyproject.toml: the installable package and its commands (`pip install -e .`, then `skd-classify` etc. from
any folder). Installing takes pip and a network, so the tests check what an install is made of instead: every
command resolves and runs from another folder, every package and module is listed, the dependencies are
requirements.txt's."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import tools

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
NOT_INSTALLED = {"bench", "tests"}  # run from a checkout only


def _resolve(entry: str) -> object:
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)


def test_every_command_names_a_module_with_a_main_block():
    assert {"skd-train-gen0", "skd-train-gen1", "skd-eval", "skd-classify", "skd-embed", "skd-export", "skd-plot",
            "skd-table", "skd-prepare", "skd-reproduce"} <= SCRIPTS.keys()
    for name, entry in SCRIPTS.items():
        command = _resolve(entry)
        assert isinstance(command, tools.Command) and callable(command), name
        spec = importlib.util.find_spec(command.module)
        assert spec is not None and spec.origin, f"{name}: no module {command.module}"
        assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(), f"{name}: {command.module} runs nothing"


def test_every_command_runs_from_another_folder(tmp_path):
    """Each command's --help, as its console script calls it, in one interpreter (torch is imported once),
    from a folder that is not the repository."""
    probe = ("import io, json, sys, contextlib\n"
             "from importlib import import_module\n"
             "done = {}\n"
             "for name, entry in json.loads(sys.argv[1]).items():\n"
             "    module, _, attribute = entry.partition(':')\n"
             "    sys.argv = [name, '--help']\n"
             "    out = io.StringIO()\n"
             "    with contextlib.redirect_stdout(out):\n"
             "        try:\n"
             "            getattr(import_module(module), attribute)()\n"
             "            code = 'returned'\n"
             "        except SystemExit as e:\n"
             "            code = e.code\n"
             "    done[name] = [code, out.getvalue()[:200]]\n"
             "print(json.dumps(done))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", probe, json.dumps(SCRIPTS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, (code, out) in json.loads(done.stdout.splitlines()[-1]).items():
        assert code in (0, None) and out.startswith("usage: "), (name, code, out)
    assert list(tmp_path.iterdir()) == []  # --help wrote nothing into the folder it ran in


def test_every_package_and_module_is_installed():
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - NOT_INSTALLED
    assert sorted(setuptools["packages"]) == sorted(packages)
    assert sorted(setuptools["py-modules"]) == sorted(p.stem for p in REPO.glob("*.py"))
    # No sub-packages: setuptools installs only the packages listed.
    assert not [p for p in REPO.glob("*/*/__init__.py") if p.parts[-3] in packages]
    # The data files the code reads beside itself.
    data = setuptools["package-data"]
    for package, patterns in data.items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"{package}: nothing matches {pattern}"
    assert "splits/*.json" in data["dataset"]


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return sorted(line for line in lines if line)


def test_dependencies_are_the_requirements_files():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert sorted(project["dependencies"] + extras["test"]) == _requirements(REPO / "requirements.txt")
    assert sorted(extras["tools"]) == _requirements(REPO / "requirements-optional.txt")
