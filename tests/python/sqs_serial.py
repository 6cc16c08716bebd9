"""Makes moto's SQS safe under concurrent requests, as SQS is: loaded by `moto_server.py`.

moto's server answers each request on a thread of its own, and its SQS changes a queue's
message list without a lock. Two races lose messages that SQS never loses:

- Two long polls that both find the same message due for the dead-letter queue (its receive
  count at maxReceiveCount) both move it; the second's `list.remove` raises and its request
  answers 500 after it has already marked other messages received. Those are then held for the
  visibility timeout by nobody and, with maxReceiveCount 1, dead-lettered at their next receive
  with no receiver anyone knows of.
- A delete rebuilds the list while a send appends to it: the sent message is gone.

Here every change to a queue's messages holds one lock, and a long poll waits outside it: each
pass over the queue is moto's own receive with no wait, repeated until messages come or the wait
is over. Nothing else of moto's behaviour changes.
"""

import functools
import threading
import time

from moto.sqs.models import Queue, SQSBackend

_LOCK = threading.RLock()


def _serialised(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


def install() -> None:
    for cls, names in [
        (Queue, ["add_message", "delete_message"]),
        (
            SQSBackend,
            [
                "send_message",
                "send_message_batch",
                "delete_message",
                "delete_message_batch",
                "change_message_visibility",
                "change_message_visibility_batch",
                "purge_queue",
            ],
        ),
    ]:
        for name in names:
            setattr(cls, name, _serialised(getattr(cls, name)))

    receive = SQSBackend.receive_message

    @functools.wraps(receive)
    def receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names=None):
        end = time.monotonic() + (wait_seconds_timeout or 0)
        while True:
            with _LOCK:
                result = receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
            left = end - time.monotonic()
            if result or left <= 0:
                return result
            # Woken by a send; visible messages that cannot be delivered now (a FIFO group in
            # flight) would not let it wait, so never poll faster than every 10 ms.
            started = time.monotonic()
            self.get_queue(queue_name).wait_for_messages(min(left, 1.0))
            if time.monotonic() - started < 0.01:
                time.sleep(min(0.01, max(0.0, end - time.monotonic())))

    SQSBackend.receive_message = receive_message
