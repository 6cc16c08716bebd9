#!/usr/bin/env python3
"""A small SQS consumer for the queue proxy's tests, with boto3 (current: JSON protocol; legacy:
query protocol). It receives COUNT messages from QUEUE_URL, then deletes, hands back and holds
them as told, and prints what it did as one JSON line. With --wait-file it then writes that file
and waits until it is stopped (SIGTERM), still holding what it holds.

    AWS_ENDPOINT_URL_SQS=http://127.0.0.1:9325 QUEUE_URL=... python proxy_consumer.py \
        --count 10 --delete-batch 3 --delete-one 1 --return-batch 2 --return-one 1
"""

import argparse
import json
import os
import signal
import sys
import time

import boto3
from botocore.config import Config

parser = argparse.ArgumentParser()
parser.add_argument("--count", type=int, required=True)
parser.add_argument("--delete-batch", type=int, default=0)
parser.add_argument("--delete-one", type=int, default=0)
parser.add_argument("--return-batch", type=int, default=0)
parser.add_argument("--return-one", type=int, default=0)
parser.add_argument("--wait-file")
args = parser.parse_args()

endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ["AWS_ENDPOINT_URL"]
queue_url = os.environ["QUEUE_URL"]
sqs = boto3.client(
    "sqs",
    endpoint_url=endpoint,
    region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
)

received = []
deadline = time.monotonic() + 120
while len(received) < args.count:
    if time.monotonic() > deadline:
        sys.exit(f"received {len(received)} of {args.count} messages within 120 s")
    out = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=min(10, args.count - len(received)),
        WaitTimeSeconds=1,
        AttributeNames=["ApproximateReceiveCount"],
    )
    received.extend(out.get("Messages", []))

done = {"protocol": sqs.meta.service_model.protocol, "received": [m["MessageId"] for m in received],
        "deleted": [], "returned": [], "held": []}
rest = list(received)


def take(n):
    global rest
    taken, rest = rest[:n], rest[n:]
    return taken


def batches(items):
    for i in range(0, len(items), 10):
        yield items[i:i + 10]


for chunk in batches(take(args.delete_batch)):
    out = sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
    if out.get("Failed"):
        sys.exit(f"DeleteMessageBatch failed entries: {out['Failed']}")
    done["deleted"] += [m["MessageId"] for m in chunk]
for m in take(args.delete_one):
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    done["deleted"].append(m["MessageId"])
for chunk in batches(take(args.return_batch)):
    out = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0} for i, m in enumerate(chunk)])
    if out.get("Failed"):
        sys.exit(f"ChangeMessageVisibilityBatch failed entries: {out['Failed']}")
    done["returned"] += [m["MessageId"] for m in chunk]
for m in take(args.return_one):
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    done["returned"].append(m["MessageId"])
done["held"] = [m["MessageId"] for m in rest]
print(json.dumps(done), flush=True)

if args.wait_file:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.wait_file, "w") as f:
        f.write(json.dumps(done))
    while True:
        signal.pause()
