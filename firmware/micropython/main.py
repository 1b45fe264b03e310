# main.py: the MTA (tinymta/board_rt.py main(): the spool, tinymta.mta.build, LED,
# watchdog, then the loop).  Config: config.json in the current directory (/ on a board), or
# the file TINYMTA_CONFIG names (the unix port in tests).  Ctrl-C stops it and leaves the REPL.
import sys

from tinymta import board_rt

rc = board_rt.main()
if rc and sys.platform == "linux":
    # the unix port: an exit status for the caller.  Not on a board: sys.exit in main.py soft-resets
    # the board, which would run main.py again and fail the same way, forever.
    sys.exit(rc)
