"""Build hook for the cffi extension (kvstore._kvwal). All other metadata lives in pyproject.toml.

cffi builds the extension against the stable ABI (`py_limited_api`, the file is
`_kvwal.abi3.so`); `bdist_wheel`'s `py_limited_api` tags the wheel to match (`cp311-abi3`), so
one wheel installs on every CPython from 3.11 on.
"""

from setuptools import setup

setup(
    cffi_modules=["native/build_kvwal.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
