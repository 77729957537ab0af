"""Build the compiled ESL parser, falling back to the pure-Python twin.

The extension is an accelerator, never a requirement: when Cython or a C
compiler is missing, or GENESIS_NO_EXTENSIONS=1 is set, the install still
succeeds and ``genesis.parser_implementation()`` reports "python".
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A build_ext whose failure degrades to the pure-Python parser."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no compiler here"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        sys.stderr.write(
            f"WARNING: genesis._parser was not compiled ({exc}); the pure-Python parser will be used.\n"
        )


def extensions() -> list[Extension]:
    if os.environ.get("GENESIS_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("WARNING: Cython is not installed; using the pure-Python parser.\n")
        return []
    return cythonize(
        [Extension("genesis._parser", ["genesis/_parser.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
