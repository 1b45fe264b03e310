"""tinymta.bounce read back by CPython's email package (an independent MIME/DSN parser).

The DSN must parse as multipart/report; report-type=delivery-status with no defects, its
message/delivery-status part must split into the per-message and per-recipient field groups,
text/rfc822-headers must hold the original header section, and the dates must parse.
"""
import email
import email.policy
import email.utils

from tinymta.bounce import build_dsn

ARRIVED = 1795000000
NOW = ARRIVED + 5400
ORIG = (b"Received: from s ([10.0.0.9]) by pi.lan (tinymta) with ESMTP id 1A2B; x\r\n"
        b"From: <alice@lan.example>\r\nTo: bob@example.com, carol@example.org\r\n"
        b"Subject: boiler alarm\r\nMessage-ID: <1A2B.0@pi.lan>\r\n")
DIAG = b"550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
RCPTS = [("bob@example.com", "5.1.1", DIAG, "mx.example.com"),
         ("carol@example.org", "5.7.1", "554 5.7.1 Service unavailable; client blocked " * 6,
          "mx2.example.org", "carol@example.org"),
         ("dave@example.net", "5.4.4", None, None)]


def _parse(msg):
    m = email.message_from_bytes(msg, policy=email.policy.default)
    assert m.defects == []
    for part in m.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
    return m


def _dsn(**kw):
    args = dict(reporting_host="pi.lan", original_sender="alice@lan.example", arrived=ARRIVED,
                recipients=RCPTS, original_headers=ORIG, queue_id="1A2B", now=NOW)
    args.update(kw)
    return build_dsn(**args)


def test_top_level_is_multipart_report():
    m = _parse(_dsn())
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert m.is_multipart()
    assert [p.get_content_type() for p in m.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    frm = m["From"].addresses
    assert len(frm) == 1 and frm[0].addr_spec == "MAILER-DAEMON@pi.lan"
    assert frm[0].display_name == "Mail Delivery System"
    assert m["To"].addresses[0].addr_spec == "alice@lan.example"
    assert m["Subject"] == "Undelivered Mail Returned to Sender"
    assert m["Auto-Submitted"] == "auto-replied" and m["MIME-Version"] == "1.0"
    mid = m["Message-ID"]
    assert mid.startswith("<") and mid.endswith("@pi.lan>")
    assert email.utils.parsedate_to_datetime(m["Date"]).timestamp() == NOW
    text = m.get_body(("plain",)).get_content()
    for a in ("bob@example.com", "carol@example.org", "dave@example.net"):
        assert "<%s>: status" % a in text


def test_delivery_status_groups():
    m = _parse(_dsn())
    ds = list(m.iter_parts())[1]
    groups = ds.get_payload()
    assert len(groups) == 4
    per_msg = groups[0]
    assert per_msg["Reporting-MTA"] == "dns; pi.lan"
    assert per_msg["X-Queue-ID"] == "1A2B"
    assert email.utils.parsedate_to_datetime(per_msg["Arrival-Date"]).timestamp() == ARRIVED
    assert per_msg["Final-Recipient"] is None

    bob, carol, dave = groups[1:]
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.example.com"
    assert bob["Diagnostic-Code"] == "smtp; " + DIAG.decode()
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == NOW
    assert bob["Original-Recipient"] is None

    assert carol["Original-Recipient"] == "rfc822; carol@example.org"
    assert carol["Status"] == "5.7.1" and carol["Action"] == "failed"
    long_diag = " ".join(("554 5.7.1 Service unavailable; client blocked " * 6).split())
    assert carol["Diagnostic-Code"] == "smtp; " + long_diag        # folded on the wire, whole here

    assert dave["Final-Recipient"] == "rfc822; dave@example.net" and dave["Status"] == "5.4.4"
    assert dave["Diagnostic-Code"] is None and dave["Remote-MTA"] is None


def test_rfc822_headers_part():
    m = _parse(_dsn())
    part = list(m.iter_parts())[2]
    raw = part.get_payload(decode=True)
    assert raw == ORIG
    orig = email.message_from_bytes(raw + b"\r\n", policy=email.policy.default)
    assert orig["Subject"] == "boiler alarm" and orig["Message-ID"] == "<1A2B.0@pi.lan>"


def test_delayed_and_hostile_input_still_parse():
    evil = b"451 4.4.1 try later\r\nBcc: victim@example.com\r\n\r\n--x\r\n\xc3\xa9\xff"
    msg = _dsn(recipients=[("bob@example.com", "4.4.1", evil, "mx.example.com")], delayed=True,
               queue_id=None, arrived=None,
               original_headers="Subject: Temperatur über 30°C\r\nFrom: a@b\r\n".encode())
    m = _parse(msg)
    assert m["Subject"] == "Delayed Mail (still being retried)"
    assert m["Bcc"] is None
    groups = list(m.iter_parts())[1].get_payload()
    assert len(groups) == 2
    assert groups[0]["X-Queue-ID"] is None and groups[0]["Arrival-Date"] is None
    r = groups[1]
    assert r["Action"] == "delayed" and r["Status"] == "4.4.1"
    assert r["Diagnostic-Code"] == "smtp; 451 4.4.1 try later Bcc: victim@example.com --x ??"
    hdrs = list(m.iter_parts())[2]
    assert hdrs["Content-Transfer-Encoding"] == "8bit"
    assert hdrs.get_payload(decode=True).decode() == "Subject: Temperatur über 30°C\r\nFrom: a@b\r\n"
