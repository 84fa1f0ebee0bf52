"""python -m xllm.benchmark [make-model | batch | limits] ..."""
import sys

from .cli import _module_main

sys.exit(_module_main())
