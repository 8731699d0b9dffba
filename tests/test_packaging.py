"""What an installed kernelsketch declares: typing marker, dependencies, version."""

import importlib.metadata
import importlib.resources
import re
from pathlib import Path

import kernelsketch

PYPROJECT = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


def test_the_package_ships_its_typing_marker():
    assert importlib.resources.files("kernelsketch").joinpath("py.typed").is_file()
    assert re.search(r'\[tool\.setuptools\.package-data\]\nkernelsketch = \["py\.typed"\]',
                     PYPROJECT)


def test_scikit_learn_is_a_dependency_at_the_version_its_users_need():
    # kernelsketch.features imports sklearn.utils.validation.validate_data (scikit-learn 1.6);
    # `make test-sklearn-oldest` runs tests/features under exactly the lower bound.
    bound = re.search(r'"scikit-learn>=([0-9.]+)"', PYPROJECT)
    assert bound and bound.group(1) == "1.6"
    requires = importlib.metadata.requires("kernelsketch") or []
    assert any(re.fullmatch(r"scikit-learn>=1\.6(\.0)?", r.split(";")[0].strip()) for r in requires), \
        "reinstall (make install): the installed metadata predates the dependency"


def test_the_version_has_one_source():
    assert 'dynamic = ["version"]' in PYPROJECT and 'attr = "kernelsketch.__version__"' in PYPROJECT
    assert importlib.metadata.version("kernelsketch") == kernelsketch.__version__
