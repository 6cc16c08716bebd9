"""Many consumers at once on an SQS endpoint: long polls, deletes and hand-backs on a queue
whose redrive policy dead-letters at the second receive, while a sender keeps sending. Prints
one JSON line: what was sent, deleted and is left in the queue and its DLQ, and the requests
that failed (retries are off, so a 500 shows). Used to hold moto's server, as the tests start
it, to SQS's guarantees: nothing lost, no receive failing.

Usage: sqs_concurrency.py ENDPOINT SECONDS   (credentials and region from the environment)"""

import json
import sys
import threading
import time

import boto3
import botocore.config


def main() -> None:
    endpoint, seconds = sys.argv[1], float(sys.argv[2])
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=20)

    def client():
        return boto3.client("sqs", endpoint_url=endpoint, config=config)

    c = client()
    dlq = c.create_queue(QueueName="concurrency-dlq")["QueueUrl"]
    arn = c.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "1"})
    queue = c.create_queue(QueueName="concurrency", Attributes={"VisibilityTimeout": "30", "RedrivePolicy": policy})["QueueUrl"]

    lock = threading.Lock()
    counts = {"sent": 0, "deleted": 0}
    errors = []
    stop = time.monotonic() + seconds

    def count(key, n=1):
        with lock:
            counts[key] += n

    def consumer():
        cl = client()
        while time.monotonic() < stop:
            try:
                out = cl.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
                for i, m in enumerate(out.get("Messages", [])):
                    if i % 2:
                        cl.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                        count("deleted")
                    else:
                        cl.change_message_visibility(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                errors.append(str(e)[:200])

    def sender():
        cl = client()
        while time.monotonic() < stop:
            cl.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(5)])
            count("sent", 5)
            time.sleep(0.01)

    threads = [threading.Thread(target=consumer) for _ in range(6)] + [threading.Thread(target=sender)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def attr(url, name):
        return int(c.get_queue_attributes(QueueUrl=url, AttributeNames=[name])["Attributes"][name])

    left = attr(queue, "ApproximateNumberOfMessages") + attr(queue, "ApproximateNumberOfMessagesNotVisible")
    dead = attr(dlq, "ApproximateNumberOfMessages")
    print(json.dumps({**counts, "left": left, "dead_lettered": dead, "errors": errors[:5], "error_count": len(errors)}))


if __name__ == "__main__":
    main()
