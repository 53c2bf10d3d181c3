"""The method registry: one entry per recipe method, each with the facts reports and tests read."""

from midus.recipe import METHODS as RECIPE_METHODS
from midus.growth.registry import METHODS


def test_every_recipe_method_is_registered_once():
    assert sorted(METHODS) == sorted(RECIPE_METHODS)
    assert all(entry.name == name for name, entry in METHODS.items())


def test_methods_are_told_apart_in_tables_and_plots():
    displays = [entry.display for entry in METHODS.values()]
    colors = [entry.color for entry in METHODS.values()]
    assert len(set(displays)) == len(displays) and len(set(colors)) == len(colors)
