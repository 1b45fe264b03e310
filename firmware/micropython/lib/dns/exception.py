"""Exceptions of the dns shim, named and nested as in dnspython's dns.exception.

Holds DNSException (the base of every error the shim raises), Timeout and FormError (a reply
that is truncated or malformed). It must not know the wire format or sockets.
"""


class DNSException(Exception):
    """Base of all shim errors: callers catch this one to catch them all."""

    msg = "DNS operation failed"

    def __init__(self, *args):
        # dnspython gives each class a default text; str(e) is never empty in a log line
        super().__init__(*(args or (self.msg,)))


class FormError(DNSException):
    """A DNS message is malformed (short, bad pointer, bad lengths, trailing bytes)."""

    msg = "DNS message is malformed"


class Timeout(DNSException):
    """No answer in time."""

    msg = "The DNS operation timed out"
