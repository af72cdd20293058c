"""`python -m xdprx.testing send|send-raw|consume ...`: the traffic and consumer
helpers the tests and benchmarks run in other processes and namespaces."""
import sys

from . import main

sys.exit(main())
