"""The `Examples:` in fbp's docstrings run as doctests, in float32 (what users get)."""

import doctest
import importlib
import pkgutil

import jax
import pytest

import fbp

MODULES = sorted(m.name for m in pkgutil.walk_packages(fbp.__path__, "fbp."))


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):   # not re-exported copies
                yield pytest.param(test, id=test.name)


EXAMPLES = list(_examples())


def test_the_public_api_has_examples():
    names = {t.values[0].name.split(".")[-1] for t in EXAMPLES}
    for public in ("value_and_grad", "check_grads", "check_layer", "explain", "fit",
                   "save_params", "load_params"):
        assert public in names, f"no Examples: in the docstring of {public}"


@pytest.mark.standard_dtype_promotion
@pytest.mark.parametrize("test", EXAMPLES)
def test_docstring_examples(test):
    out = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with jax.enable_x64(False):
        failed, _ = runner.run(test, out=out.append)
    assert failed == 0, "".join(out)
