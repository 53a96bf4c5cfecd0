# The softvmm CPU core is C compiled through cffi at install time
# (`pip install -e .`); everything else is declared in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["bhive/accel/softvmm/_build.py:ffibuilder"])
