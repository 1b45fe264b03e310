"""The `tinymta` command line (CPython): argument parsing and exit codes only.

Each subcommand hands its work to the module that owns it; errors a user can
cause (bad file, bad argument) become one line on stderr and exit status 2,
never a traceback.  This module must not hold MTA logic.
"""
import argparse
import sys

from tinymta import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error the rest of the CLI gives (exit status 2)."""

    def error(self, message):
        sys.stderr.write("tinymta: %s (see %s --help)\n" % (message, self.prog))
        sys.exit(2)


_CTL_COMMANDS = (   # name, takes queue ids, help
    ("status", False, "uptime, spool, queue and hop health"),
    ("mailq", False, "list the queue"),
    ("flush", False, "try every deferred message now"),
    ("hold", True, "hold messages"),
    ("release", True, "release held messages"),
    ("delete", True, "delete messages (no bounce)"),
    ("retry", True, "try messages now"),
    ("show", True, "show a message's envelope, state and headers"),
)


def _build_parser():
    p = _Parser(prog="tinymta", description="An embedded MTA for single-board computers.")
    p.add_argument("--version", action="version", version="tinymta " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sv = sub.add_parser("serve", help="run the MTA (the defaults of DESIGN.md without -c)")
    sv.add_argument("-c", "--config", metavar="FILE", help="TOML (or JSON) configuration file")
    sv.add_argument("--console", action="store_true", help="also run the console on this terminal")
    for name, needs, text in _CTL_COMMANDS:
        q = sub.add_parser(name, help=text + " (over the running MTA's control socket)")
        if needs:
            q.add_argument("ids", nargs="+", metavar="ID", help="queue id(s), as mailq shows them")
        q.add_argument("--json", action="store_true", help="one line of JSON per answer")
        q.add_argument("-c", "--config", metavar="FILE", help="the config file serve uses (for console.socket)")
    cn = sub.add_parser("console", help="open a device's serial console (history; picocom works too)")
    cn.add_argument("port", help="serial device, e.g. /dev/ttyACM0")
    cn.add_argument("--baud", type=int, default=115200, metavar="N", help="baud rate (default 115200)")
    sp = sub.add_parser("spool", help="inspect a spool file offline")
    ssub = sp.add_subparsers(dest="spool_command", metavar="ACTION")
    c = ssub.add_parser("check", help="verify every live message; exit 1 when damage is found")
    c.add_argument("file")
    d = ssub.add_parser("dump", help="list the live messages, free space and wear")
    d.add_argument("--json", action="store_true", help="one line of JSON")
    d.add_argument("file")
    k = ssub.add_parser("cat", help="write one message's stored bytes to standard output")
    k.add_argument("file")
    k.add_argument("id")
    sub.add_parser("sendmail", add_help=False,
                   help="sendmail(1) for cron & co: hand standard input to the local tinymta"
                        " (-t, -f FROM, -F NAME, -i, -c FILE, recipients; see tinymta/sendmail.py)")
    pw = sub.add_parser("passwd", help="hash a password (read from standard input) into a users-file line")
    pw.add_argument("--iterations", type=int, default=None, metavar="N",
                    help="PBKDF2 iterations (default 100000; fewer for slow boards, see tinymta/auth.py)")
    pw.add_argument("user")
    ins = sub.add_parser("install", help="set tinymta up as a systemd service on a Linux board"
                                         " (config, user, spool, unit, sendmail; see tinymta/install.py)")
    ins.add_argument("--board", required=True, metavar="NAME", help="board profile (board/NAME.toml) or a .toml path")
    ins.add_argument("--root", metavar="DIR", help="install into this staging root instead of /")
    ins.add_argument("-c", "--config", metavar="USERCONFIG", help="your config (TOML/JSON), laid over the profile's")
    ins.add_argument("--force", action="store_true", help="replace an edited /etc/tinymta/tinymta.toml")
    bc = sub.add_parser("build-config", help="compile a MicroPython board's config: profile + TOML -> JSON"
                                             " (see tinymta/flash.py)")
    bc.add_argument("--board", required=True, metavar="NAME", help="board profile (board/NAME.toml) or a .toml path")
    bc.add_argument("-c", "--config", metavar="FILE", help="your config (TOML), laid over the profile's")
    bc.add_argument("-o", "--output", metavar="FILE", help="write the JSON here (default: standard output)")
    fl = sub.add_parser("flash", help="put tinymta (.mpy), boot.py, main.py and config.json on a MicroPython"
                                      " board with mpremote (see tinymta/flash.py)")
    fl.add_argument("--board", required=True, metavar="NAME", help="board profile (board/NAME.toml) or a .toml path")
    fl.add_argument("--port", required=True, metavar="DEV", help="the board's serial device (/dev/ttyACM0)")
    fl.add_argument("-c", "--config", metavar="FILE", help="your config (TOML), laid over the profile's")
    fl.add_argument("--resume", action="store_true",
                    help="accepted for old scripts; no effect: flash always connects without a soft reset")
    fl.add_argument("--emulator", action="store_true",
                    help="the board is the unix port on a pty (tests/boardsim.py): no reset at the end")
    fl.add_argument("--no-reset", action="store_true", help="do not reset the board after copying")
    fl.add_argument("--stage", metavar="DIR", help="compile into DIR (new or empty) and keep it")
    return p


def _read_password():
    """The password: asked twice without echo on a terminal, else one line of standard input."""
    if sys.stdin.isatty():
        import getpass
        try:
            first = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise ValueError("no password given")
        if again != first:
            raise ValueError("passwords do not match")
        return first
    line = sys.stdin.buffer.readline()
    if not line:
        raise ValueError("no password on standard input")
    try:
        return line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeError:
        raise ValueError("the password on standard input is not valid UTF-8")


def _passwd(user, iterations):
    from tinymta import auth
    auth.check_username(user)
    if iterations is None:
        iterations = auth.DEFAULT_ITERATIONS
    elif not 1 <= iterations <= auth.MAX_ITERATIONS:
        raise ValueError("--iterations must be from 1 to %d" % auth.MAX_ITERATIONS)
    password = _read_password()
    if not password:
        raise ValueError("empty password")
    sys.stdout.write("%s:%s\n" % (user, auth.hash_password(password, iterations)))
    return 0


def main(argv=None):
    raw = sys.argv[1:] if argv is None else list(argv)
    if raw and raw[0] == "sendmail":  # sendmail's flag style is not argparse's: raw argv through
        from tinymta import sendmail
        try:
            return sendmail.main(raw[1:])
        except KeyboardInterrupt:
            return 75  # EX_TEMPFAIL: the caller keeps the mail
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "serve":
            from tinymta.mta import serve, StartupError
            try:
                return serve(args.config, args.console)
            except StartupError as e:
                sys.stderr.write("tinymta: %s\n" % e)
                return 2
        if args.command in [c[0] for c in _CTL_COMMANDS]:
            from tinymta import ctl
            return ctl.run(args.command, getattr(args, "ids", None), args.json, args.config)
        if args.command == "console":
            from tinymta import ctl
            return ctl.console(args.port, args.baud)
        if args.command == "passwd":
            return _passwd(args.user, args.iterations)
        if args.command == "install":
            from tinymta import install
            return install.main(args)
        if args.command in ("build-config", "flash"):
            from tinymta import flash
            try:
                if args.command == "build-config":
                    return flash.cmd_build_config(args.board, args.config, args.output)
                return flash.cmd_flash(args.board, args.config, args.port, args.resume, args.emulator,
                                       args.no_reset, args.stage)
            except flash.FlashError as e:
                sys.stderr.write("tinymta: %s\n" % e)
                return 2
        if args.command == "spool":
            from tinymta import spooltool
            if args.spool_command == "check":
                return spooltool.check(args.file, sys.stdout)
            if args.spool_command == "dump":
                return spooltool.dump(args.file, sys.stdout, args.json)
            if args.spool_command == "cat":
                return spooltool.cat(args.file, args.id)
            sys.stderr.write("tinymta: spool needs an action: check, dump or cat (see tinymta spool --help)\n")
            return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, Exception) as e:  # user-facing: one line, no traceback
        from tinymta.blockdev import BlockDeviceError
        from tinymta.spoolfmt import SpoolError
        if not isinstance(e, (OSError, ValueError, BlockDeviceError, SpoolError)):
            raise
        msg = str(e) if not isinstance(e, OSError) or not e.filename else "%s: %s" % (e.filename, e.strerror)
        sys.stderr.write("tinymta: %s\n" % msg)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
