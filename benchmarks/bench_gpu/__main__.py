"""``python -m benchmarks.bench_gpu OUT``: see the package's docstring."""

import sys

from benchmarks.bench_gpu.harness import main

sys.exit(main())
