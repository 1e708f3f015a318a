import sys

from bench.protocols.run import main

sys.exit(main(prog="python -m bench.protocols"))
