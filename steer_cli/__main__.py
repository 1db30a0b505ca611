import sys

from steer_cli import main

sys.exit(main())
