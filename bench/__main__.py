"""`python -m bench`: the benchmarks behind `make bench`."""

import sys

from bench.runner import main

sys.exit(main())
