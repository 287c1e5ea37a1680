"""Package discovery (everything else is in pyproject.toml): every package under tokentrim_cli/ is found, so a new
subpackage ships without editing a list; presets/ at the top of the checkout ships as tokentrim_cli.presets."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["tokentrim_cli", "tokentrim_cli.*"]), "tokentrim_cli.presets"])
