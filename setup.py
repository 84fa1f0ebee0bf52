"""Build the xllm Cython extension; metadata lives in pyproject.toml.

Compiler flags and Cython directives are data at the top of this file.  The AVX2/FMA
kernels in simd.h are compiled through function-level `target` attributes and picked at
run time, so the default build runs on any x86-64 (or other) CPU; XLLM_NATIVE=1 adds
-march=native for the whole extension, XLLM_DEBUG=1 builds with -O0 -g and bounds checks,
XLLM_SANITIZE=1 with AddressSanitizer and UndefinedBehaviorSanitizer (the compiler's runtime;
run Python with it preloaded, see README "Hardening").
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = os.environ.get("XLLM_NATIVE", "0") == "1"
DEBUG = os.environ.get("XLLM_DEBUG", "0") == "1"
SANITIZE = os.environ.get("XLLM_SANITIZE", "0") == "1"

COMPILE_ARGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno", "-fno-trapping-math"]
LINK_ARGS = []
if NATIVE:
    COMPILE_ARGS += ["-march=native"]
if SANITIZE:   # -O1 keeps the stack traces readable; UBSan aborts on the first report
    SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    COMPILE_ARGS = ["-O1", "-g", "-fno-math-errno", "-fno-trapping-math"] + SANITIZERS
    LINK_ARGS = SANITIZERS
OPENMP_COMPILE_ARGS = ["-fopenmp"]
OPENMP_LINK_ARGS = ["-fopenmp"]
DEFINE_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

EXTENSIONS = [
    # (module, sources)
    ("xllm._kernels", ["xllm/_kernels.pyx"]),
    ("xllm._probe", ["xllm/_probe.pyx"]),      # machine-limit probes for the benchmarks
    ("xllm.parallel._allreduce", ["xllm/parallel/_allreduce.pyx"]),   # MPI hook, no MPI at build time
    ("xllm._spin", ["xllm/_spin.pyx"]),        # spin timing read before OpenMP loads: no OpenMP
]
WITHOUT_OPENMP = {"xllm._spin"}


def openmp_works() -> bool:
    """Compile and link a tiny OpenMP program; without OpenMP the kernels run single-threaded."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        result = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "probe")],
                                capture_output=True)
        return result.returncode == 0


def extensions():
    use_openmp = openmp_works()
    if not use_openmp:
        print("xllm: OpenMP not available; building single-threaded kernels", file=sys.stderr)
    exts = []
    for name, sources in EXTENSIONS:
        openmp = use_openmp and name not in WITHOUT_OPENMP
        exts.append(Extension(
            name, sources,
            include_dirs=["xllm", numpy.get_include()],
            depends=sorted(glob.glob("xllm/*.h")) + ["xllm/_kernels.pxd"],   # rebuild when a header changes
            define_macros=DEFINE_MACROS,
            extra_compile_args=COMPILE_ARGS + (OPENMP_COMPILE_ARGS if openmp else []),
            extra_link_args=LINK_ARGS + (OPENMP_LINK_ARGS if openmp else []),
        ))
    return cythonize(exts, compiler_directives=CYTHON_DIRECTIVES, quiet=True)


setup(ext_modules=extensions())
