#!/usr/bin/env python3
"""The AWS CLI (v1, the `awscli` package) against the embedded queue, as a user types it.

Uses the `aws` installed beside this Python (a virtual environment's bin/), or $AWS_CLI.

    AWS_ENDPOINT_URL=http://127.0.0.1:9324 target/pyenv/current/bin/python sqs_awscli.py
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sqs_checks import (  # noqa: E402
    ACCESS_KEY, ENDPOINT, REGION, RUN, SECRET_KEY, check, check_eq, md5_hex, md5_of_attributes, run, wait_for,
)


def find_cli():
    explicit = os.environ.get("AWS_CLI")
    if explicit:
        return [explicit]
    beside = os.path.join(os.path.dirname(sys.executable), "aws")
    if os.path.exists(beside):
        # Run it with this interpreter, so a moved virtual environment still works.
        return [sys.executable, beside]
    found = shutil.which("aws")
    if found:
        return [found]
    sys.exit("no AWS CLI: install the awscli package into this Python (pip install awscli) or set AWS_CLI")


CLI = find_cli()
EMPTY_CONFIG = tempfile.NamedTemporaryFile(prefix="aws-config-", delete=False).name
ENV = dict(
    os.environ,
    AWS_ACCESS_KEY_ID=ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY=SECRET_KEY,
    AWS_DEFAULT_REGION=REGION,
    # Nothing from the user's own ~/.aws may change what is tested.
    AWS_CONFIG_FILE=EMPTY_CONFIG,
    AWS_SHARED_CREDENTIALS_FILE=EMPTY_CONFIG,
    AWS_MAX_ATTEMPTS="1",
    AWS_PAGER="",
)


def aws(*args, expect_error=False):
    """Run `aws sqs ARGS...`; return its parsed JSON output (or, with expect_error, its stderr)."""
    command = CLI + ["--endpoint-url", ENDPOINT, "--region", REGION, "--output", "json", "sqs"] + list(args)
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    if expect_error:
        check(done.returncode != 0, f"`aws sqs {' '.join(args)}` succeeded; an error was expected: {done.stdout}")
        return done.stderr
    if done.returncode != 0:
        raise AssertionError(f"`aws sqs {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def name(suffix):
    return f"{RUN}-cli-{suffix}"


def receive(url, want, *extra):
    got = []

    def attempt():
        reply = aws("receive-message", "--queue-url", url, "--max-number-of-messages", str(min(10, want - len(got))),
                    "--wait-time-seconds", "1", *extra)
        got.extend(reply.get("Messages", []))
        return len(got) >= want

    wait_for(f"{want} message(s) on {url}", attempt)
    check_eq(len(got), want, "messages received")
    return got


def visible(url):
    attrs = aws("get-queue-attributes", "--queue-url", url, "--attribute-names", "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible")["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_version_and_protocol():
    done = subprocess.run(CLI + ["--version"], env=ENV, capture_output=True, text=True, timeout=60)
    check_eq(done.returncode, 0, f"aws --version ({done.stderr.strip()})")
    print(f"     {(done.stdout or done.stderr).strip()}")
    expected = os.environ.get("COALMINE_EXPECT_PROTOCOL")
    if not expected:
        return
    # The CLI's debug log shows the request it made and the response it parsed.
    done = subprocess.run(CLI + ["--debug", "--endpoint-url", ENDPOINT, "--region", REGION, "sqs", "list-queues"],
                          env=ENV, capture_output=True, text=True, timeout=60)
    check_eq(done.returncode, 0, f"aws sqs list-queues ({done.stderr[-2000:]})")
    spoken = ("json" if "AmazonSQS.ListQueues" in done.stderr
              else "query" if "'Action': 'ListQueues'" in done.stderr and "<ListQueuesResponse" in done.stderr
              else "unknown")
    check_eq(spoken, expected, "protocol the AWS CLI spoke")


def test_queue_lifecycle():
    url = aws("create-queue", "--queue-name", name("life"), "--attributes", "VisibilityTimeout=40",
              "--tags", "team=blue")["QueueUrl"]
    check(url.endswith("/" + name("life")), f"queue URL {url!r}")
    check_eq(aws("get-queue-url", "--queue-name", name("life"))["QueueUrl"], url, "get-queue-url")
    check_eq(aws("list-queues", "--queue-name-prefix", name("life"))["QueueUrls"], [url], "list-queues")
    attrs = aws("get-queue-attributes", "--queue-url", url, "--attribute-names", "All")["Attributes"]
    check_eq(attrs.get("VisibilityTimeout"), "40", "VisibilityTimeout from create-queue")
    aws("set-queue-attributes", "--queue-url", url, "--attributes", "VisibilityTimeout=50,DelaySeconds=1")
    attrs = aws("get-queue-attributes", "--queue-url", url, "--attribute-names", "VisibilityTimeout",
                "DelaySeconds")["Attributes"]
    check_eq(attrs, {"VisibilityTimeout": "50", "DelaySeconds": "1"}, "attributes after set-queue-attributes")
    check_eq(aws("list-queue-tags", "--queue-url", url).get("Tags"), {"team": "blue"}, "tags from create-queue")
    aws("tag-queue", "--queue-url", url, "--tags", "env=ci,team=red")
    check_eq(aws("list-queue-tags", "--queue-url", url).get("Tags"), {"team": "red", "env": "ci"}, "after tag-queue")
    aws("untag-queue", "--queue-url", url, "--tag-keys", "team")
    check_eq(aws("list-queue-tags", "--queue-url", url).get("Tags"), {"env": "ci"}, "after untag-queue")
    aws("delete-queue", "--queue-url", url)
    check_eq(aws("list-queues", "--queue-name-prefix", name("life")).get("QueueUrls", []), [], "after delete-queue")


def test_messages():
    url = aws("create-queue", "--queue-name", name("msgs"))["QueueUrl"]
    body = "hello <&> é 😀\r\nsecond line"
    attributes = {
        "kind": {"DataType": "String", "StringValue": "order"},
        "count": {"DataType": "Number", "StringValue": "7"},
        # AWS CLI v1 sends a blob argument's text as the bytes.
        "blob": {"DataType": "Binary", "BinaryValue": "raw bytes"},
    }
    sent = aws("send-message", "--queue-url", url, "--message-body", body,
               "--message-attributes", json.dumps(attributes))
    check_eq(sent["MD5OfMessageBody"], md5_hex(body.encode()), "MD5OfMessageBody")
    check_eq(sent["MD5OfMessageAttributes"], md5_of_attributes(attributes), "MD5OfMessageAttributes")

    [message] = receive(url, 1, "--attribute-names", "All", "--message-attribute-names", "All")
    check_eq(message["Body"], body, "Body")
    check_eq(message["MD5OfBody"], md5_hex(body.encode()), "MD5OfBody")
    check_eq(message["MD5OfMessageAttributes"], md5_of_attributes(attributes), "MD5OfMessageAttributes received")
    got = message["MessageAttributes"]
    check_eq(got["kind"], attributes["kind"], "String attribute")
    check_eq(got["count"], attributes["count"], "Number attribute")
    check_eq(got["blob"]["DataType"], "Binary", "Binary attribute's type")
    check_eq(got["blob"]["BinaryValue"], base64.b64encode(b"raw bytes").decode(), "Binary attribute (base64 on output)")
    check_eq(message["Attributes"]["ApproximateReceiveCount"], "1", "ApproximateReceiveCount")

    aws("change-message-visibility", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"],
        "--visibility-timeout", "0")
    [again] = receive(url, 1, "--attribute-names", "ApproximateReceiveCount")
    check_eq(again["Attributes"]["ApproximateReceiveCount"], "2", "receive count after change-message-visibility 0")
    aws("delete-message", "--queue-url", url, "--receipt-handle", again["ReceiptHandle"])
    check_eq(visible(url), (0, 0), "counts after delete-message")

    entries = [{"Id": f"e{i}", "MessageBody": f"batch {i}"} for i in range(10)]
    sent = aws("send-message-batch", "--queue-url", url, "--entries", json.dumps(entries))
    check_eq(len(sent.get("Successful", [])), 10, f"send-message-batch successes ({sent.get('Failed')})")
    for entry in sent["Successful"]:
        check_eq(entry["MD5OfMessageBody"], md5_hex(f"batch {entry['Id'][1:]}".encode()), f"MD5 of {entry['Id']}")
    messages = receive(url, 10)
    deleted = aws("delete-message-batch", "--queue-url", url, "--entries", json.dumps(
        [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]))
    check_eq(len(deleted.get("Successful", [])), 10, f"delete-message-batch ({deleted.get('Failed')})")
    check_eq(visible(url), (0, 0), "counts after delete-message-batch")

    aws("send-message", "--queue-url", url, "--message-body", "to purge")
    aws("purge-queue", "--queue-url", url)
    check_eq(visible(url), (0, 0), "counts after purge-queue")
    aws("delete-queue", "--queue-url", url)


def test_dead_letters_and_redrive():
    dlq = aws("create-queue", "--queue-name", name("dlq"))["QueueUrl"]
    dlq_arn = aws("get-queue-attributes", "--queue-url", dlq, "--attribute-names", "QueueArn")["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})
    url = aws("create-queue", "--queue-name", name("src"), "--attributes",
              json.dumps({"RedrivePolicy": policy, "VisibilityTimeout": "600"}))["QueueUrl"]
    check_eq(aws("list-dead-letter-source-queues", "--queue-url", dlq)["queueUrls"], [url],
             "list-dead-letter-source-queues")
    aws("send-message", "--queue-url", url, "--message-body", "poison")
    [message] = receive(url, 1)
    aws("change-message-visibility", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"],
        "--visibility-timeout", "0")

    def moved():
        check_eq(aws("receive-message", "--queue-url", url).get("Messages", []), [],
                 "a message past maxReceiveCount is not delivered again")
        return visible(dlq)[0] == 1

    wait_for("the message to reach the dead-letter queue", moved)
    task = aws("start-message-move-task", "--source-arn", dlq_arn)
    check(task.get("TaskHandle"), f"start-message-move-task: {task}")
    [back] = receive(url, 1)
    check_eq(back["Body"], "poison", "the redriven message")
    tasks = aws("list-message-move-tasks", "--source-arn", dlq_arn)["Results"]
    check(tasks and tasks[0]["SourceArn"] == dlq_arn, f"list-message-move-tasks: {tasks}")
    aws("delete-queue", "--queue-url", url)
    aws("delete-queue", "--queue-url", dlq)


def test_errors():
    stderr = aws("get-queue-url", "--queue-name", name("missing"), expect_error=True)
    check("QueueDoesNotExist" in stderr or "NonExistentQueue" in stderr, f"missing queue error: {stderr.strip()}")
    missing = ENDPOINT.rstrip("/") + "/000000000000/" + name("missing")
    stderr = aws("send-message", "--queue-url", missing, "--message-body", "x", expect_error=True)
    check("QueueDoesNotExist" in stderr or "NonExistentQueue" in stderr, f"send to a missing queue: {stderr.strip()}")
    url = aws("create-queue", "--queue-name", name("err"))["QueueUrl"]
    stderr = aws("receive-message", "--queue-url", url, "--max-number-of-messages", "11", expect_error=True)
    check("InvalidParameterValue" in stderr, f"max-number-of-messages 11: {stderr.strip()}")
    stderr = aws("delete-message", "--queue-url", url, "--receipt-handle", "bogus", expect_error=True)
    check("ReceiptHandleIsInvalid" in stderr, f"bogus receipt handle: {stderr.strip()}")
    aws("delete-queue", "--queue-url", url)


if __name__ == "__main__":
    try:
        run([test_version_and_protocol, test_queue_lifecycle, test_messages, test_dead_letters_and_redrive, test_errors], "awscli")
    finally:
        os.unlink(EMPTY_CONFIG)
