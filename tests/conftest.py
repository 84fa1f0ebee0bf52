import os
from pathlib import Path

import pytest

# Every operator of every test model on all the threads it is given: tiny models would
# otherwise run single-threaded (as they should in use) and the tests of 1 thread == N
# threads would not split anything.  test_model.py checks the default team sizes.
os.environ.setdefault("XLLM_WORK_PER_THREAD_NS", "0")

SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"

KNOWN_PROMPT = "Once upon a time"
KNOWN_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
              "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily")
KNOWN_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401,
             396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358,
             394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398,
             312, 286, 267, 414, 270, 333, 415, 426, 13, 438, 310]


@pytest.fixture(scope="session")
def shared_models():
    if not SHARED_MODELS.is_dir():
        pytest.fail(f"{SHARED_MODELS} is missing: the tests need ../shared/models beside the checkout")
    return SHARED_MODELS


@pytest.fixture(params=["amx", "avx512", "avx2", "scalar"])
def simd(request):
    """Run a test through every kernel path this CPU has (a level it lacks is skipped)."""
    from xllm import _kernels
    if request.param == "amx" and not _kernels.has_amx():
        pytest.skip("this CPU (or kernel) gives no AMX int8 tiles")
    if request.param == "avx512" and not _kernels.has_avx512():
        pytest.skip("this CPU has no AVX-512 VNNI")
    if request.param == "avx2" and not _kernels.has_avx2():
        pytest.skip("this CPU has no AVX2/FMA")
    before = _kernels.simd_level()
    assert _kernels.set_simd_level(request.param) == request.param
    yield request.param
    _kernels.set_simd_level(before)
