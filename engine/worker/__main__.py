import sys

from engine.worker.main import child_main

sys.exit(child_main(sys.argv[1:]))
