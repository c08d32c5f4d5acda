"""Runs scripts/release_parity.py against a checkout of the official release named by SKD_RELEASE_DIR."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.environ.get("SKD_RELEASE_DIR")


@pytest.mark.skipif(not RELEASE, reason="set SKD_RELEASE_DIR to a checkout of the release: "
                                        "git clone https://github.com/brjathu/SKD")
def test_release_parity_passes_at_zero_tolerance():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "release_parity.py"),
                             "--official", RELEASE, "--tol", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_release_parity_rejects_a_directory_without_the_release(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "release_parity.py"),
                             "--official", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "models/resnet_ssl.py not found" in result.stderr
