"""The wheel's one build step beyond pyproject.toml: it ships the current conformance vectors.

They live in the repository at ``spec/vectors/<format>`` (Spec §12.2) and go into the wheel as package
data at ``hogwild_ref/conformance/vector_files/<format>``, so ``hogwild-ref conform`` runs from an
installed wheel; a source checkout (an editable install) reads ``spec/`` itself.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: hogwild_ref.conformance.vectors.FORMAT (tests/test_packaging.py checks that they agree)
FORMAT = "v3"


class BuildWithVectors(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # the checkout's spec/ is read in place
            return
        source = Path(__file__).resolve().parent / "spec" / "vectors" / FORMAT
        if not source.is_dir():
            raise SystemExit(f"{source} is missing: build the wheel from a checkout or from the sdist")
        target = Path(self.build_lib) / "hogwild_ref" / "conformance" / "vector_files" / FORMAT
        shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithVectors})
