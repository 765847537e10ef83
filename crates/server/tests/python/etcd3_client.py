"""The Python `etcd3` client (PyPI etcd3 0.12.0) against an etcd v3 server.

Run by crates/server/tests/python_etcd3.rs against a raftkv cluster and, when etcd 3.4 is
installed, against etcd itself: every expectation here is etcd's behaviour.

    python etcd3_client.py HOST:PORT [HOST:PORT]

With ETCD3_CA_CERT, ETCD3_CERT_CERT and ETCD3_CERT_KEY (file paths) it connects over TLS with
a client certificate, and with ETCD3_USER and ETCD3_PASSWORD it authenticates as that user.

The first endpoint takes the writes; watches are also opened on the second endpoint (another
member) when given. Every check prints one line; the last line is "N passed, N failed" and
the exit status is 1 when a check failed.
"""

import os
import queue
import sys
import threading
import time
import traceback

import etcd3
from etcd3 import events

# Seconds to wait for an event that should come (the machine is shared with builds).
WAIT = 20.0

results = {"passed": 0, "failed": 0}


def check(name):
    """Runs the decorated function as one named check."""

    def run(fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            results["failed"] += 1
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
        else:
            results["passed"] += 1
            print(f"ok   {name}")
        sys.stdout.flush()
        return fn

    return run


def expect(got, want, what=""):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def connect(endpoint):
    """A client of `endpoint`; with TLS and a user when the environment names them
    (ETCD3_CA_CERT, ETCD3_CERT_CERT, ETCD3_CERT_KEY, ETCD3_USER, ETCD3_PASSWORD)."""
    host, port = endpoint.rsplit(":", 1)
    options = {
        option: os.environ[f"ETCD3_{option.upper()}"]
        for option in ("ca_cert", "cert_cert", "cert_key", "user", "password")
        if f"ETCD3_{option.upper()}" in os.environ
    }
    return etcd3.client(host=host, port=int(port), timeout=10, **options)


def next_events(iterator, n):
    """The next `n` events of a watch iterator, read in a thread so that a missing event
    fails the check after WAIT seconds instead of hanging."""
    out = queue.Queue()

    def read():
        try:
            got = []
            for event in iterator:
                got.append(event)
                if len(got) == n:
                    break
            out.put(got)
        except Exception as e:  # noqa: BLE001 - handed to the check
            out.put(e)

    threading.Thread(target=read, daemon=True).start()
    try:
        got = out.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"fewer than {n} events within {WAIT}s") from None
    if isinstance(got, Exception):
        raise got
    return got


def summary(evs):
    """(kind, key, value, mod_revision) of each event."""
    return [
        ("put" if isinstance(e, events.PutEvent) else "delete", e.key.decode(), e.value.decode(), e.mod_revision)
        for e in evs
    ]


def poll(what, fn, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def main():
    endpoints = sys.argv[1:]
    if not endpoints:
        print(__doc__)
        return 2
    client = connect(endpoints[0])
    others = [connect(ep) for ep in endpoints[1:2]] or [client]
    client.delete_prefix("py/")
    client.delete_prefix("/locks/py-")

    @check("kv: put, get with metadata, prev_kv, get_prefix sorted, get_range, delete")
    def _():
        r1 = client.put("py/kv/a", "1").header.revision
        prev = client.put("py/kv/a", "2", prev_kv=True).prev_kv
        expect((prev.value, prev.mod_revision), (b"1", r1), "prev_kv")
        value, meta = client.get("py/kv/a")
        expect(value, b"2", "value")
        expect((meta.key, meta.create_revision, meta.mod_revision - r1, meta.version), (b"py/kv/a", r1, 1, 2))
        expect(client.get("py/kv/missing"), (None, None), "missing key")
        client.put("py/kv/c", "3")
        client.put("py/kv/b", "4")
        got = [(m.key, v) for v, m in client.get_prefix("py/kv/", sort_order="descend")]
        expect(got, [(b"py/kv/c", b"3"), (b"py/kv/b", b"4"), (b"py/kv/a", b"2")], "get_prefix descending")
        got = [m.key for _, m in client.get_range("py/kv/a", "py/kv/c")]
        expect(got, [b"py/kv/a", b"py/kv/b"], "get_range")
        expect(client.delete("py/kv/b"), True, "delete of a present key")
        expect(client.delete("py/kv/b"), False, "delete of an absent key")
        expect(client.delete_prefix("py/kv/").deleted, 2, "delete_prefix")

    @check("kv: put_if_not_exists, replace, transaction with compares on value, version, revisions")
    def _():
        expect(client.put_if_not_exists("py/tx/a", "1"), True, "first put_if_not_exists")
        expect(client.put_if_not_exists("py/tx/a", "9"), False, "second put_if_not_exists")
        expect(client.replace("py/tx/a", "1", "2"), True, "replace with the right value")
        expect(client.replace("py/tx/a", "1", "3"), False, "replace with a stale value")
        _, meta = client.get("py/tx/a")
        t = client.transactions
        ok, responses = client.transaction(
            compare=[
                t.value("py/tx/a") == "2",
                t.version("py/tx/a") == 2,
                t.create("py/tx/a") == meta.create_revision,
                t.mod("py/tx/a") < meta.mod_revision + 1,
            ],
            success=[t.put("py/tx/b", "b"), t.get("py/tx/a"), t.delete("py/tx/none")],
            failure=[t.put("py/tx/never", "x")],
        )
        expect(ok, True, "all compares hold")
        expect(len(responses), 3, "one response per op")
        got_a = [(m.key, v) for v, m in responses[1]]
        expect(got_a, [(b"py/tx/a", b"2")], "get inside the txn")
        ok, responses = client.transaction(
            compare=[t.value("py/tx/a") != "2"],
            success=[t.put("py/tx/never", "x")],
            failure=[t.get("py/tx/b")],
        )
        expect(ok, False, "a failing compare")
        expect([v for v, _ in responses[0]], [b"b"], "failure branch ran")
        expect(client.get("py/tx/never"), (None, None), "success branch did not run")
        client.delete_prefix("py/tx/")

    @check("watch: a key, live events, cancel ends the iterator")
    def _():
        iterator, cancel = client.watch("py/w/key")
        r1 = client.put("py/w/key", "1").header.revision
        client.put("py/w/other", "x")
        client.delete("py/w/key")
        evs = next_events(iterator, 2)
        expect(summary(evs), [("put", "py/w/key", "1", r1), ("delete", "py/w/key", "", r1 + 2)])
        cancel()
        client.put("py/w/key", "after cancel")
        expect(list(iterator), [], "events after cancel")

    @check("watch: a prefix with prev_kv, on this member and another")
    def _():
        watches = [c.watch_prefix("py/wp/", prev_kv=True) for c in [client] + others]
        r1 = client.put("py/wp/a", "1").header.revision
        client.put("py/w/not-in-prefix", "x")
        client.put("py/wp/b", "2")
        client.put("py/wp/a", "3")
        want = [("put", "py/wp/a", "1", r1), ("put", "py/wp/b", "2", r1 + 2), ("put", "py/wp/a", "3", r1 + 3)]
        for iterator, cancel in watches:
            evs = next_events(iterator, 3)
            expect(summary(evs), want, "prefix events")
            # etcd3's Event has no accessor for prev_kv: read it off the protobuf event.
            expect(evs[2]._event.prev_kv.value, b"1", "prev_kv of the overwrite")
            cancel()

    @check("watch: from a start revision replays history, then goes on live without a gap")
    def _():
        r1 = client.put("py/ws/a", "1").header.revision
        client.put("py/ws/b", "2")
        client.delete("py/ws/a")
        history = [("put", "py/ws/b", "2", r1 + 1), ("delete", "py/ws/a", "", r1 + 2)]
        for i, c in enumerate([client] + others):
            iterator, cancel = c.watch_prefix("py/ws/", start_revision=r1 + 1)
            past = next_events(iterator, len(history))
            expect(summary(past), history, "the history from the start revision")
            rev = client.put(f"py/ws/live{i}", "v").header.revision
            live = next_events(iterator, 1)
            history += [("put", f"py/ws/live{i}", "v", rev)]
            expect(summary(live), history[-1:], "the live event after the history")
            cancel()

    @check("watch: callbacks, cancel_watch, watch_once with and without an event")
    def _():
        seen = queue.Queue()
        watch_id = client.add_watch_callback("py/cb", lambda resp: seen.put(resp))
        rev = client.put("py/cb", "1").header.revision
        resp = seen.get(timeout=WAIT)
        expect([(e.key, e.mod_revision) for e in resp.events], [(b"py/cb", rev)], "callback events")
        client.cancel_watch(watch_id)
        try:
            client.watch_once("py/once", timeout=0.5)
            raise AssertionError("watch_once returned without an event")
        except etcd3.exceptions.WatchTimedOut:
            pass
        timer = threading.Timer(0.3, lambda: client.put("py/once", "now"))
        timer.start()
        event = client.watch_once("py/once", timeout=WAIT)
        timer.join()
        expect((event.key, event.value), (b"py/once", b"now"), "watch_once event")

    @check("lease: grant, keys, time to live, refresh, revoke deletes its keys")
    def _():
        lease = client.lease(60)
        expect(lease.ttl, 60, "granted TTL")
        client.put("py/lease/a", "1", lease=lease)
        client.put("py/lease/b", "2", lease=lease.id)
        _, meta = client.get("py/lease/a")
        expect(meta.lease_id, lease.id, "the key's lease id")
        info = client.get_lease_info(lease.id)
        expect((info.ID, info.grantedTTL), (lease.id, 60), "lease info")
        expect(sorted(info.keys), [b"py/lease/a", b"py/lease/b"], "the lease's keys")
        if not 55 <= info.TTL <= 60:
            raise AssertionError(f"remaining TTL {info.TTL} not in 55..=60")
        refreshed = lease.refresh()
        expect([r.TTL for r in refreshed], [60], "keep-alive answer")
        expect(lease.granted_ttl, 60, "granted_ttl")
        iterator, cancel = client.watch_prefix("py/lease/")
        lease.revoke()
        evs = next_events(iterator, 2)
        cancel()
        kinds = sorted((type(e).__name__, e.key) for e in evs)
        expect(kinds, [("DeleteEvent", b"py/lease/a"), ("DeleteEvent", b"py/lease/b")], "revoke's deletes")
        expect(evs[0].mod_revision, evs[1].mod_revision, "one revision for both deletes")
        expect(client.get("py/lease/a"), (None, None), "key of a revoked lease")
        expect(client.get_lease_info(lease.id).TTL, -1, "TTL of a revoked lease")

    @check("lease: expiry deletes the keys on every member, with watch events; refresh keeps a lease")
    def _():
        short = client.lease(2)
        kept = client.lease(2)
        client.put("py/exp/short", "1", lease=short)
        client.put("py/exp/kept", "1", lease=kept)
        watches = [c.watch("py/exp/short") for c in [client] + others]
        start = time.monotonic()
        while time.monotonic() - start < 4.5:
            kept.refresh()
            time.sleep(0.5)
        poll("the expired lease's key to go", lambda: client.get("py/exp/short") == (None, None))
        for iterator, cancel in watches:
            evs = next_events(iterator, 1)
            expect([(type(e).__name__, e.key) for e in evs], [("DeleteEvent", b"py/exp/short")], "expiry event")
            cancel()
        for c in [client] + others:
            expect(c.get("py/exp/short", serializable=True), (None, None), "expired key on a member")
        expect(client.get("py/exp/kept")[0], b"1", "key of the kept-alive lease")
        expect(client.get_lease_info(short.id).TTL, -1, "TTL of an expired lease")
        kept.revoke()

    @check("lock: acquire, contended acquire times out, release hands it over, context manager")
    def _():
        first = client.lock("py-lock", ttl=30)
        second = client.lock("py-lock", ttl=30)
        expect(first.acquire(timeout=5), True, "uncontended acquire")
        expect(first.is_acquired(), True, "holder sees its lock")
        began = time.monotonic()
        expect(second.acquire(timeout=1), False, "contended acquire")
        if time.monotonic() - began < 0.9:
            raise AssertionError("the contended acquire gave up before its timeout")
        expect(second.is_acquired(), False, "waiter does not hold the lock")
        timer = threading.Timer(0.5, first.release)
        timer.start()
        expect(second.acquire(timeout=WAIT), True, "acquire after release")
        timer.join()
        expect(first.is_acquired(), False, "released holder")
        value, _ = client.get("/locks/py-lock")
        expect(value, second.uuid, "the lock key holds the holder's id")
        second.release()
        with client.lock("py-lock", ttl=30) as third:
            expect(third.is_acquired(), True, "context manager holds the lock")
        expect(client.get("/locks/py-lock"), (None, None), "lock key after the context manager")

    @check("lock: a holder whose lease expires loses the lock to a waiter")
    def _():
        holder = client.lock("py-expiring", ttl=2)
        expect(holder.acquire(timeout=5), True, "holder acquires")
        waiter = connect(endpoints[-1]).lock("py-expiring", ttl=30)
        began = time.monotonic()
        expect(waiter.acquire(timeout=WAIT), True, "waiter acquires once the holder's lease expired")
        waited = time.monotonic() - began
        if waited < 1.0:
            raise AssertionError(f"waiter acquired after {waited:.2f}s, before the holder's 2 s lease expired")
        expect(holder.is_acquired(), False, "the expired holder")
        expect(waiter.is_acquired(), True, "the new holder")
        waiter.release()

    @check("maintenance: status and members")
    def _():
        status = client.status()
        if not status.version.startswith("3."):
            raise AssertionError(f"version {status.version!r}")
        if status.leader is None:
            raise AssertionError("no leader in the status")
        members = list(client.members)
        if not members or not all(m.client_urls for m in members):
            raise AssertionError(f"members {members!r}")

    client.delete_prefix("py/")
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
