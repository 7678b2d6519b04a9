# Builds the compiled module splitnet_kernels._core from src/ and the header-only kernels/, and
# ships kernels/ inside the package for sk.get_include(). No -march=native and no -ffast-math:
# each ISA is enabled per function by target attributes in kernels/, so a wheel built on one
# x86-64 machine runs on any other.
import os
import pathlib
import shutil
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

# SPLITNET_KERNELS_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer (CI's
# sanitizer job); run Python with the ASan runtime preloaded (see .ci/run).
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
FLAGS = [] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-Wall"]
if os.environ.get("SPLITNET_KERNELS_SANITIZE") == "1":
    FLAGS = ["-O1", "-Wall", *SANITIZE]

HEADERS = sorted(str(p) for p in pathlib.Path("kernels/splitnet_kernels").glob("*.h"))
BINDING_HEADERS = sorted(str(p) for p in pathlib.Path("src").glob("*.h"))  # the binding's own, not shipped


class build_py_with_headers(build_py):
    def run(self):
        super().run()
        target = pathlib.Path(self.build_lib) / "splitnet_kernels" / "include" / "splitnet_kernels"
        target.mkdir(parents=True, exist_ok=True)
        for header in HEADERS:
            shutil.copy(header, target)


setup(
    ext_modules=[
        Pybind11Extension(
            "splitnet_kernels._core",
            ["src/core.cpp", "src/torch_ops.cpp"],
            include_dirs=["kernels"],
            cxx_std=17,
            extra_compile_args=FLAGS,
            extra_link_args=SANITIZE if "-fsanitize=address,undefined" in FLAGS else [],
            depends=[*HEADERS, *BINDING_HEADERS],
        )
    ],
    cmdclass={"build_ext": build_ext, "build_py": build_py_with_headers},
)
