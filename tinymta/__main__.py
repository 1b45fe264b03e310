"""`python -m tinymta` / `micropython -m tinymta`: the command line."""
import sys

from tinymta.cli import main

sys.exit(main())
