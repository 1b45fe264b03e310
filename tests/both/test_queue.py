"""The delivery queue's scheduling: backoff, expiry, flush when the link is back, hold.  Both runtimes."""
from tinymta.queue import Queue


def test_new_mail_is_due_at_once_oldest_first():
    q = Queue(300, 3600, 432000)
    q.add(2, 100, 1000)
    q.add(1, 90, 1000)
    q.add(3, 110, 1001)
    assert q.due(1000) == [1, 2] and q.due(1001) == [1, 2, 3]
    q.begin(1)
    assert q.due(1001) == [2, 3]


def test_backoff_doubles_between_min_and_max():
    q = Queue(300, 3600, 432000)
    assert [q.backoff(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]
    q.add(7, 0, 0)
    q.begin(7)
    assert q.deferred(7, 10, ("mx.example", "RCPT", "451 4.7.1 greylisted")) is False
    assert q.due(309) == [] and q.due(310) == [7]
    assert q.entries[7].last_error[1] == "RCPT"


def test_expiry_after_max_age():
    q = Queue(300, 3600, 1000)
    q.add(1, 0, 0)
    q.begin(1)
    assert q.deferred(1, 999) is False
    q.begin(1)
    assert q.deferred(1, 1000) is True and q.expired(1, 1000)


def test_link_back_makes_deferred_mail_due_at_once():
    q = Queue(300, 3600, 432000)
    for i in (1, 2, 3):
        q.add(i, 0, 0)
        q.begin(i)
        q.deferred(i, 0, ("mx", "CONNECT", "refused"))
    assert q.due(100) == []
    q.retry(1, 100)
    q.begin(1)
    q.delivered(1, 100)                          # the upstream answered again
    assert q.due(100) == [2, 3] and 1 not in q


def test_first_try_success_does_not_flush_others():
    q = Queue(300, 3600, 432000)
    q.add(1, 0, 0)
    q.begin(1)
    q.deferred(1, 0)
    q.add(2, 0, 0)
    q.begin(2)
    q.delivered(2, 5)
    assert q.due(5) == []


def test_hold_release_flush_remove_counts():
    q = Queue(300, 3600, 432000)
    for i in (1, 2, 3):
        q.add(i, 0, 0)
    q.hold(2)
    q.begin(3)
    q.deferred(3, 0)
    assert q.counts() == (1, 1, 1)
    assert q.due(0) == [1]
    q.release(2, 1)
    q.flush(1)
    assert q.due(1) == [1, 2, 3]
    q.remove(1)
    assert len(q) == 2 and q.next_due() == 1


def test_hop_health():
    q = Queue()
    q.hop_failed("smtp.example:587", 10, "AUTH", "535 5.7.8 bad credentials")
    q.hop_ok("smtp.example:587", 20)
    assert q.hops["smtp.example:587"] == [20, 10, ("AUTH", "535 5.7.8 bad credentials")]


def test_due_with_a_limit_is_the_oldest_in_order():
    q = Queue()
    for i in range(200):
        q.add(i, 0, (i * 7919) % 101)            # scattered due times
    full = q.due(1000)
    assert full == sorted(full, key=lambda m: ((m * 7919) % 101, m))
    for limit in (1, 2, 4, 9):
        assert q.due(1000, limit) == full[:limit]
