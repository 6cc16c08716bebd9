"""A queue worker as people write them in Python: boto3, long polling, one message at a time.

Used by coalmine's end-to-end tests as a worker coalmine did not write. Configured from the
environment (the standard AWS variables for the client; QUEUE_URL or QUEUE):

  WORK_MS        work per message, default 100
  SLOW           multiplies WORK_MS (a slower release), default 1
  FAIL_RATE      share of messages that fail, default 0
  FAIL_WORD      messages whose body contains this word fail
  FAILURE_STYLE  leave (default: a failed message is not deleted; it comes back, or goes to the
                 DLQ, when its visibility timeout lapses) or return (ChangeMessageVisibility 0)
  HANG           when set, the worker stops answering on its first message (holds it forever)
  CRASH_AT_START when set, exit 1 at once
  CRASH_AFTER    exit 1 after this many messages

One line per message on stdout: "processed ID revision=R task=T ms=N order=K" or "failed ID ..."
(order: the number in a body "order K ...", or -; a redriven message keeps its body, not its id).
"""

import os
import random
import signal
import sys
import time

import boto3


def env(name, default=""):
    return os.environ.get(name, default).strip()


def main():
    if env("CRASH_AT_START"):
        print("worker: CRASH_AT_START is set: exiting with status 1", file=sys.stderr, flush=True)
        sys.exit(1)
    work = float(env("WORK_MS", "100")) * float(env("SLOW", "1")) / 1000.0
    fail_rate = float(env("FAIL_RATE", "0"))
    fail_word = env("FAIL_WORD")
    leave = env("FAILURE_STYLE", "leave") != "return"
    hang = bool(env("HANG"))
    crash_after = int(env("CRASH_AFTER", "0"))
    rev = env("COALMINE_REVISION", "unknown")
    task = env("COALMINE_TASK", "unknown")

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    sqs = boto3.client("sqs", region_name=os.environ.get("AWS_REGION") or None)
    url = env("QUEUE_URL") or sqs.get_queue_url(QueueName=env("QUEUE"))["QueueUrl"]
    print(f"worker started revision={rev} task={task} leave_failures={leave}", flush=True)
    done = 0
    while not stopping:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in out.get("Messages", []):
            if hang:
                print(f"worker: hanging on {m['MessageId']}", flush=True)
                while True:
                    time.sleep(3600)
            started = time.monotonic()
            time.sleep(work)
            ms = int((time.monotonic() - started) * 1000)
            words = m["Body"].split()
            order = words[1] if len(words) > 1 and words[0] == "order" else "-"
            ok = random.random() >= fail_rate and not (fail_word and fail_word in m["Body"])
            if ok:
                # The work is done: say so before the delete, so that a worker killed during the
                # delete (which may have reached the queue) still leaves the line. If the delete
                # did not happen, the message comes back and is processed again: at least once.
                print(f"processed {m['MessageId']} revision={rev} task={task} ms={ms} order={order}", flush=True)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            else:
                print(f"failed {m['MessageId']} revision={rev} task={task} ms={ms} order={order} error=simulated", flush=True)
                if not leave:
                    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
            done += 1
            if crash_after and done >= crash_after:
                print(f"worker: CRASH_AFTER={crash_after} reached: exiting with status 1", file=sys.stderr, flush=True)
                os._exit(1)


if __name__ == "__main__":
    main()
