"""`python -m llavakit ...` is the same as the `llavakit` command."""

import sys

from llavakit.cli.main import main

sys.exit(main())
