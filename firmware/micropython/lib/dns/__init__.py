"""The dns shim: the subset of dnspython that tinymta.mx uses, for MicroPython boards.

A package named like dnspython so `import dns.resolver` and `import dns.exception` work
unchanged on a board: dns.resolver (Resolver, the answer records, NXDOMAIN / NoAnswer /
NoNameservers), dns.exception (DNSException, Timeout, FormError) and the private dns._wire
(the message format). tests/test_dnsshim.py compares it with the real dnspython.

It must not know tinymta, SMTP or any configuration file format; on CPython the real dnspython
is used and this package is never on the path.
"""
