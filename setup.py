"""Build hook for the cffi extension (kvstore._kvwal). All metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_kvwal.py:ffibuilder"])
