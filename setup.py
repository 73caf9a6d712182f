"""Builds agentcomm's native extension by driving CMake (nothing else).

torch is found through ``torch.utils.cmake_prefix_path``, so install with
``pip install --no-build-isolation .`` to build against the torch already in
the environment (the extension links c10d, whose ABI changes between torch
versions). ``CMAKE_ARGS`` and ``CMAKE_BUILD_PARALLEL_LEVEL`` are honoured.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch.utils

        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(os.environ.get("AGENTCOMM_BUILD_DIR", Path(self.build_temp) / "cmake")).resolve()
        build_temp.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DAGENTCOMM_BUILD_PYTHON=ON",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('AGENTCOMM_BUILD_TYPE', 'Release')}",
        ]
        if shutil.which("ninja"):
            args.append("-GNinja")
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "--target", "_C", "-j", jobs], cwd=build_temp, check=True)
        self._check_libstdcxx(Path(self.get_ext_fullpath(ext.name)))

    @staticmethod
    def _check_libstdcxx(module: Path) -> None:
        """Fails the build if the compiler linked its own static libstdc++ into the module.

        Seen with a toolchain in /opt/gcc on a CUDA image: the module then carries a second copy
        of the iostream/locale machinery beside the process's libstdc++ and crashes (SIGSEGV)
        at its first ``ostream << int``, i.e. in init_process_group.
        """
        nm = shutil.which("nm")
        if nm is None or not module.exists() or os.environ.get("AGENTCOMM_ALLOW_STATIC_LIBSTDCXX") == "1":
            return
        out = subprocess.run([nm, "-D", "--defined-only", str(module)], capture_output=True, text=True).stdout
        if "_ZNSt6locale" in out:
            compiler = os.environ.get("CXX", "the default C++ compiler")
            raise RuntimeError(
                f"agentcomm: {compiler} linked a static libstdc++ into {module.name}; loaded beside the "
                "process's shared libstdc++ it crashes. Rebuild with the system compiler, e.g. "
                "CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++ pip install --no-build-isolation . "
                "(AGENTCOMM_ALLOW_STATIC_LIBSTDCXX=1 skips this check)")


setup(
    packages=find_packages(include=["agentcomm", "agentcomm.*"]),
    ext_modules=[CMakeExtension("agentcomm._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
