"""`python -m tinymta` / `micropython -m tinymta`: the command line."""
import sys

from tinymta import compat

if compat.MICROPYTHON:
    from tinymta.mta import main_micropython
    sys.exit(main_micropython(sys.argv[1:]))
else:
    from tinymta.cli import main
    sys.exit(main())
