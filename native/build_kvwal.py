"""cffi build script for `kvstore._kvwal` (out-of-line API mode).

setup.py names it in `cffi_modules`, so `pip install -e .` compiles the extension. The cdef is
derived from native/kvwal.h itself, so the header stays the one description of the C API:
comments and the include guard go, every `#define` becomes `...` (the C compiler supplies the
value) and so does every array size that names a constant.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

# Relative paths keep setuptools happy (it refuses absolute source paths in some modes); the
# build runs from the project root.
SOURCES = ["native/kvwal.c", "native/crc32c.c"]
HEADER = Path(__file__).with_name("kvwal.h")

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_LINE_COMMENT = re.compile(r"//[^\n]*")
_DEFINE = re.compile(r"#define\s+(KVWAL_[A-Z0-9_]+)\s+\S")
_ARRAY_SIZE = re.compile(r"\[[A-Za-z0-9_ ]+\]")


def header_to_cdef(header: str) -> str:
    """The declarations of a C header in the form cffi's `cdef` takes."""
    text = _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", header))
    lines: list[str] = []
    in_cplusplus = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#ifdef __cplusplus"):
            in_cplusplus = True
        elif in_cplusplus:
            in_cplusplus = not stripped.startswith("#endif")
        elif stripped.startswith("#"):
            define = _DEFINE.match(stripped)
            if define:
                lines.append(f"#define {define.group(1)} ...")
        elif stripped:
            lines.append(_ARRAY_SIZE.sub("[...]", line.rstrip()))
    return "\n".join(lines) + "\n"


CDEF = header_to_cdef(HEADER.read_text())

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "kvstore._kvwal",
    '#include "kvwal.h"',
    sources=SOURCES,
    include_dirs=["native"],
    extra_compile_args=[
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
        "-pthread",
    ],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
