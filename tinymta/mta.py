"""Assembling and running the MTA from a configuration: spool, users, TLS, server, signals.

`serve(path)` is what `tinymta serve -c FILE` runs on CPython and what a board's main.py
runs on MicroPython (with a JSON config).  Errors a user can cause (bad config, a spool
file of the wrong size, a port in use) raise StartupError with a one-line message.

This module must not hold protocol or storage logic; it only wires the parts together.
"""
import sys

from tinymta import compat
from tinymta.config import load, ConfigError
from tinymta.netaddr import format_hostport

log = compat.get_logger("mta")


class StartupError(Exception):
    """The MTA cannot start; the message says why in one line."""


def open_spool(cfg):
    from tinymta.blockdev import FileBlockDevice, BlockDeviceError
    from tinymta.spool import Spool
    from tinymta.spoolfmt import SpoolError
    sc = cfg.spool
    try:
        dev = FileBlockDevice(sc.path, size=sc.size, block_size=sc.sector_size, prog_unit=sc.prog_unit)
    except BlockDeviceError as e:
        raise StartupError(str(e))            # names the file already
    except OSError as e:
        raise StartupError("spool %s: %s" % (sc.path, compat.os_error_text(e)))
    try:
        return Spool(dev)
    except SpoolError as e:
        dev.close()
        raise StartupError("spool %s: %s (spool.sector_size is %d, spool.prog_unit %d)"
                           % (sc.path, e, sc.sector_size, sc.prog_unit))


def build(cfg, spool=None, console_stdin=False):
    """A ready Server for cfg (listening sockets open, relay and console attached).
    console_stdin: also run the console on standard input (`serve --console`)."""
    from tinymta.server import Server
    srv_cfg = cfg.server
    users = None
    if srv_cfg.auth_users_file:
        from tinymta.auth import load_users, Users, AuthFileError
        try:
            users = Users(load_users(srv_cfg.auth_users_file))
        except (AuthFileError, OSError) as e:
            raise StartupError(str(e))
    tls = None
    if srv_cfg.tls_cert:
        try:
            tls = compat.server_tls_context(srv_cfg.tls_cert, srv_cfg.tls_key)
        except (OSError, ValueError) as e:
            raise StartupError("TLS certificate %s / key %s: %s" % (srv_cfg.tls_cert, srv_cfg.tls_key, e))
    from tinymta.relay import Relay, read_password
    try:
        password = read_password(cfg)       # before the spool: a failed start creates nothing
    except ValueError as e:
        raise StartupError(str(e))
    srv = Server(cfg, None, users, tls)
    try:                            # the port first: a busy port must not create a spool file
        srv.listen()
    except OSError as e:
        srv.close_listeners()
        raise StartupError("cannot listen on %s: %s" % (
            " ".join(format_hostport(a) for a in srv_cfg.listen), compat.os_error_text(e)))
    try:
        srv.spool = spool or open_spool(cfg)
    except StartupError:
        srv.close_listeners()
        raise
    try:
        srv.relay = Relay(srv, cfg, password=password)
    except (OSError, ValueError, ImportError) as e:
        srv.close_listeners()
        srv.spool.close()
        raise StartupError("relay: %s" % compat.os_error_text(e) if isinstance(e, OSError) else "relay: %s" % e)
    if not (cfg.console.serial or console_stdin or (cfg.console.socket and not compat.MICROPYTHON)):
        return srv                  # no console anywhere: its code is not even loaded (board RAM)
    from tinymta.console import Console, LogRing
    from tinymta.consoleio import attach
    ring = LogRing()
    compat.set_log_tap(ring)
    try:
        srv.closers = attach(srv, Console(srv, ring), cfg, console_stdin)
    except (OSError, ValueError) as e:
        srv.close_listeners()
        srv.spool.close()
        raise StartupError(str(e) if isinstance(e, ValueError) else
                           "control socket %s: %s" % (cfg.console.socket, compat.os_error_text(e)))
    return srv


def _install_signals(srv):
    """SIGTERM and SIGINT stop the loop between passes (CPython).  MicroPython has no signal
    module: there SIGINT arrives as KeyboardInterrupt, and SIGTERM ends the process at once,
    which the spool survives like a power cut."""
    try:
        import signal
    except ImportError:
        return
    def stop(signum, frame):
        log.info("signal %d: stopping", signum)
        srv.stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def serve(path=None, console_stdin=False):
    """Load the config, start the MTA and run until SIGTERM/SIGINT; 0 on a clean stop."""
    try:
        cfg = load(path)
    except ConfigError as e:
        raise StartupError(str(e))
    compat.set_log_level(cfg.log.level)
    srv = build(cfg, console_stdin=console_stdin)
    log.info("tinymta ready: listening on %s, spool %s (%d messages), hostname %s",
             " ".join(format_hostport(a) for a in cfg.server.listen), cfg.spool.path, len(srv.spool), cfg.server.hostname)
    sys.stdout.write("READY\n")     # readiness line for supervisors and tests
    try:
        sys.stdout.flush()
    except AttributeError:
        pass
    _install_signals(srv)
    try:
        srv.run()
    except KeyboardInterrupt:       # MicroPython delivers SIGINT this way (it has no signal module)
        log.info("interrupted: stopping")
        srv.shutdown(True)
    return 0


def main_micropython(argv):
    """`micropython -m tinymta serve [-c FILE]`: the board's command line, without argparse."""
    argv = list(argv)
    stdin = "--console" in argv
    if stdin:
        argv.remove("--console")
    if not argv or argv[0] != "serve" or len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "-c"):
        sys.stderr.write("usage: micropython -m tinymta serve [-c config.json] [--console]\n")
        return 2
    try:
        return serve(argv[2] if len(argv) == 3 else None, stdin)
    except StartupError as e:
        sys.stderr.write("tinymta: %s\n" % e)
        return 2
