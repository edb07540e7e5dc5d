"""Build step of hakmem-forensics: compile csrc/ into the package's _native/ folder.

`pip install .` runs build_py, which runs `make -C csrc OUT=<build_lib>/forensics/_native all`,
so the wheel carries libhakmem.so, libhakmem_debug.so and libhfdriver.so. The wheel is tagged
platform-specific (the libraries are native code) but not tied to a Python ABI (ctypes only).
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 (pyproject asks for newer; this is for --no-build-isolation)
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
FIXTURES = os.path.join(HERE, "fixtures")
NATIVE_LIBS = ("libhakmem.so", "libhakmem_debug.so", "libhfdriver.so", "hfreplay", "libhakmem_preload.so", "libhfrecord.so")


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # Editable installs import forensics from the source tree: build next to it.
            out = os.path.join(HERE, "forensics", "_native")
        else:
            out = os.path.join(os.path.abspath(self.build_lib), "forensics", "_native")
        make = shutil.which("make")
        if make is None:
            raise SystemExit("hakmem-forensics: building the native libraries needs `make` and a C compiler (cc)")
        subprocess.check_call([make, "-C", CSRC, f"OUT={out}", "all"])
        missing = [lib for lib in NATIVE_LIBS if not os.path.exists(os.path.join(out, lib))]
        if missing:
            raise SystemExit(f"hakmem-forensics: make did not produce {', '.join(missing)} in {out}")
        if not getattr(self, "editable_mode", False):
            # The bundled traces (the default replay input among them) ship inside the package.
            dest = os.path.join(os.path.abspath(self.build_lib), "forensics", "fixtures")
            os.makedirs(dest, exist_ok=True)
            for name in sorted(os.listdir(FIXTURES)):
                if name.endswith(".trace"):
                    shutil.copyfile(os.path.join(FIXTURES, name), os.path.join(dest, name))

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            out = os.path.join(self.build_lib, "forensics", "_native")
            outputs += [os.path.join(out, lib) for lib in NATIVE_LIBS]
        return outputs


CMDCLASS = {"build_py": BuildPyWithNative}

if bdist_wheel is not None:

    class NativeWheel(bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            # Native code but no Python extension module: any Python 3, this platform.
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    CMDCLASS["bdist_wheel"] = NativeWheel


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(
    distclass=BinaryDistribution,
    cmdclass=CMDCLASS,
)
