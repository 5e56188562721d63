"""Every public name exists and is documented."""

import importlib
import inspect

import pytest

import jgrad

SUBPACKAGES = ["analyze", "data", "experiments", "init", "nn"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_public_name_exists_and_has_a_docstring(name):
    mod = importlib.import_module(f"jgrad.{name}")
    assert mod.__doc__
    assert mod.__all__, name
    for attr in mod.__all__:
        obj = getattr(mod, attr)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__ and obj.__doc__.strip(), (
                f"jgrad.{name}.{attr} has no docstring"
            )


def test_fixed_names_from_the_design():
    for attr in ["Layer", "serial", "dense", "mlp", "activation"]:
        assert hasattr(jgrad.nn, attr)
    for attr in [
        "standard_uniform",
        "glorot_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "orthogonal",
        "identity",
        "gaussian",
    ]:
        assert callable(getattr(jgrad.init, attr))
    assert jgrad.nn.Layer._fields == ("init", "apply")
