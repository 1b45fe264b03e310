"""Flash decay under a running relay: the spool file changes behind the MTA's back.

The relay promises never to complete a message whose stored bytes fail their CRC: the final
dot goes out only after every fragment checked out, so a corrupt body is cut off before the dot
(the next hop discards it) and the message stays queued.  An envelope that no longer reads back
is deferred, never left "in delivery" for good.  Neither is ever acked: the spool keeps both and
reports them as damage (`tinymta spool check`).  Real peers: the MTA process, smtp-sink as the
smarthost, the CLI on the control socket.
"""
import os
import subprocess
import sys

from mtaproc import ROOT
from relaykit import SINK_IPS, message, needs, peers, relay_smarthost, send, wait_for  # noqa: F401


def flip(path, marker):
    """Change one byte inside the only stored copy of marker (a bit of decayed flash)."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(marker)
        assert at >= 0 and data.find(marker, at + 1) < 0, marker
        f.seek(at + len(marker) // 2)
        f.write(bytes([data[at + len(marker) // 2] ^ 0x20]))


def test_decayed_body_and_envelope_are_never_delivered_and_stay_queued(peers):
    needs("smtp-sink")
    hop = SINK_IPS[0]
    mta = peers.mta(relay=relay_smarthost(hop, peers.port, retry_min="1h", retry_max="1h"))
    # the decay in a later fragment: the envelope (fragment 0) still reads, the body does not
    body_msg = message("decay", body=(b"y" * 78 + b"\r\n") * 300 + b"BODYMARK-" + b"x" * 64 + b"\r\n")
    env_msg = message("envdecay")            # the envelope sender below appears nowhere else
    send(mta, "alice@client.test", ["bob@example.test"], body_msg)
    send(mta, "envmark-b@client.test", ["bob@example.test"], env_msg)
    wait_for(lambda: mta.log().count("status=deferred") >= 2, 15, "both deferred (no smarthost yet)")
    flip(mta.spool_path, b"BODYMARK-")
    flip(mta.spool_path, b"envmark-b@client.test")
    sink = peers.smtp_sink(hop)
    subprocess.run([sys.executable, "-m", "tinymta", "flush", "-c", mta.config_path], check=True,
                   capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    wait_for(lambda: "delivery aborted before the final dot" in mta.log(), 15, "the body's CRC to fail")
    wait_for(lambda: "cannot read the envelope" in mta.log(), 15, "the envelope's CRC to fail")
    assert sink.counters()["mesg"] == 0 and sink.dumps() == []      # nothing was completed
    assert mta.stop() == 0
    # never acked as delivered: the spool still holds both, and reports them as damage
    check = subprocess.run([sys.executable, "-m", "tinymta", "spool", "check", mta.spool_path],
                           capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert check.returncode == 1 and "DAMAGED (2 corrupt messages)" in check.stdout, check.stdout
