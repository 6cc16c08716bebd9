#!/usr/bin/env python3
"""boto3 against the embedded queue: the basics every SQS client relies on.

Runs with any boto3: a current one speaks the AWS JSON 1.0 protocol, one from before
November 2023 the form-encoded query protocol with XML responses. Set
COALMINE_EXPECT_PROTOCOL=json or =query to make sure the installed botocore speaks the
protocol the caller means to test.

    AWS_ENDPOINT_URL=http://127.0.0.1:9324 COALMINE_EXPECT_PROTOCOL=query python sqs_boto3.py
"""

import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import boto3  # noqa: E402
import botocore  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from sqs_checks import (  # noqa: E402
    ACCESS_KEY, ENDPOINT, REGION, RUN, SECRET_KEY, check, check_eq, md5_hex, md5_of_attributes, run, wait_for,
)

sqs = boto3.client(
    "sqs",
    endpoint_url=ENDPOINT,
    region_name=REGION,
    aws_access_key_id=ACCESS_KEY,
    aws_secret_access_key=SECRET_KEY,
    config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
)
PROTOCOL = sqs.meta.service_model.protocol
LABEL = f"boto3-{boto3.__version__}-{PROTOCOL}"

# Every character class SQS allows in a body: markup, CR (which XML parsers would turn into LF
# unless the server escapes it), tab, LF, accents, astral-plane characters.
TRICKY_BODY = "<order id=\"1\">&amp; 'x' </order>\r\nline\ttwo\r é ü 中 😀 \U0010FFFF end "

ATTRIBUTES = {
    "kind": {"DataType": "String", "StringValue": "order <&> é"},
    "count": {"DataType": "Number", "StringValue": "42"},
    "price": {"DataType": "Number.float", "StringValue": "-1.5e3"},
    "blob": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
}


def name(suffix):
    return f"{RUN}-{suffix}"


def create(suffix, **kwargs):
    return sqs.create_queue(QueueName=name(suffix), **kwargs)["QueueUrl"]


def arn_of(url):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def counts(url):
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"]),
            int(attrs["ApproximateNumberOfMessagesDelayed"]))


def receive(url, want, **kwargs):
    """Receive until `want` messages have come, within a deadline."""
    got = []

    def attempt():
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, want - len(got)), WaitTimeSeconds=1,
                                    **kwargs)
        got.extend(reply.get("Messages", []))
        return len(got) >= want

    wait_for(f"{want} message(s) on {url}", attempt)
    check_eq(len(got), want, "messages received")
    return got


def error_code(call):
    try:
        call()
    except ClientError as err:
        return err.response["Error"]["Code"], err
    raise AssertionError("the call succeeded; an error was expected")


# --- tests -----------------------------------------------------------------------------------


def test_protocol_is_the_expected_one():
    expected = os.environ.get("COALMINE_EXPECT_PROTOCOL")
    if expected:
        check_eq(PROTOCOL, expected, f"protocol spoken by botocore {botocore.__version__}")


def test_create_get_list_delete_queue():
    url = create("life", Attributes={"VisibilityTimeout": "45", "DelaySeconds": "0"})
    check(url.startswith("http://") and url.endswith("/" + name("life")), f"queue URL {url!r}")
    check_eq(sqs.create_queue(QueueName=name("life"), Attributes={"VisibilityTimeout": "45"})["QueueUrl"], url,
             "CreateQueue again with the same attributes")
    code, _ = error_code(lambda: sqs.create_queue(QueueName=name("life"), Attributes={"VisibilityTimeout": "46"}))
    check(code in ("QueueAlreadyExists", "QueueNameExists"), f"error for different attributes: {code}")
    check_eq(sqs.get_queue_url(QueueName=name("life"))["QueueUrl"], url, "GetQueueUrl")
    other = create("life2")
    listed = sqs.list_queues(QueueNamePrefix=name("life"))["QueueUrls"]
    check_eq(sorted(listed), sorted([url, other]), "ListQueues by prefix")
    page = sqs.list_queues(QueueNamePrefix=name("life"), MaxResults=1)
    check_eq(len(page["QueueUrls"]), 1, "ListQueues MaxResults=1")
    check("NextToken" in page, f"ListQueues with more results gives a NextToken: {page}")
    rest = sqs.list_queues(QueueNamePrefix=name("life"), MaxResults=1, NextToken=page["NextToken"])
    check_eq(sorted(page["QueueUrls"] + rest["QueueUrls"]), sorted([url, other]), "both pages of ListQueues")
    check_eq(sqs.list_queues(QueueNamePrefix=name("nothing-here")).get("QueueUrls", []), [], "empty ListQueues")
    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=other)
    check_eq(sqs.list_queues(QueueNamePrefix=name("life")).get("QueueUrls", []), [], "ListQueues after delete")


def test_send_and_receive_with_attributes():
    url = create("attrs")
    sent = sqs.send_message(QueueUrl=url, MessageBody=TRICKY_BODY, MessageAttributes=ATTRIBUTES)
    check_eq(sent["MD5OfMessageBody"], md5_hex(TRICKY_BODY.encode()), "MD5OfMessageBody of SendMessage")
    check_eq(sent["MD5OfMessageAttributes"], md5_of_attributes(ATTRIBUTES), "MD5OfMessageAttributes of SendMessage")
    check(sent["MessageId"], "SendMessage returns a MessageId")

    [message] = receive(url, 1, AttributeNames=["All"], MessageAttributeNames=["All"])
    check_eq(message["MessageId"], sent["MessageId"], "MessageId")
    check_eq(message["Body"], TRICKY_BODY, "Body, byte for byte")
    check_eq(message["MD5OfBody"], md5_hex(TRICKY_BODY.encode()), "MD5OfBody")
    check_eq(message["MessageAttributes"], ATTRIBUTES, "MessageAttributes")
    check_eq(message["MD5OfMessageAttributes"], md5_of_attributes(ATTRIBUTES), "MD5OfMessageAttributes")
    attrs = message["Attributes"]
    check_eq(attrs.get("ApproximateReceiveCount"), "1", "ApproximateReceiveCount")
    for key in ("SentTimestamp", "ApproximateFirstReceiveTimestamp", "SenderId"):
        check(key in attrs, f"system attribute {key} in {attrs}")
    check(int(attrs["SentTimestamp"]) > 1_600_000_000_000, f"SentTimestamp in ms: {attrs['SentTimestamp']}")
    check_eq(counts(url), (0, 1, 0), "visible / in flight / delayed after receive")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    check_eq(counts(url), (0, 0, 0), "counts after delete")

    # Only the named attributes come back, and their digest covers only them.
    sqs.send_message(QueueUrl=url, MessageBody="two", MessageAttributes=ATTRIBUTES)
    [message] = receive(url, 1, MessageAttributeNames=["count", "blob"])
    subset = {k: ATTRIBUTES[k] for k in ("count", "blob")}
    check_eq(message["MessageAttributes"], subset, "named MessageAttributes")
    check_eq(message["MD5OfMessageAttributes"], md5_of_attributes(subset), "MD5 of the named attributes")
    check("Attributes" not in message, f"no system attributes unless asked: {message.get('Attributes')}")
    sqs.delete_queue(QueueUrl=url)


def test_batches():
    url = create("batch")
    entries = [{"Id": f"m{i}", "MessageBody": f"body {i} <&>"} for i in range(10)]
    entries[3]["MessageAttributes"] = {"n": {"DataType": "Number", "StringValue": "3"}}
    entries[4]["DelaySeconds"] = 0
    sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    check_eq(sent.get("Failed", []), [], "failed entries of SendMessageBatch")
    by_id = {e["Id"]: e for e in sent["Successful"]}
    check_eq(sorted(by_id), sorted(e["Id"] for e in entries), "ids of SendMessageBatch results")
    for entry in entries:
        check_eq(by_id[entry["Id"]]["MD5OfMessageBody"], md5_hex(entry["MessageBody"].encode()), f"MD5 of {entry['Id']}")
    check_eq(by_id["m3"]["MD5OfMessageAttributes"], md5_of_attributes(entries[3]["MessageAttributes"]),
             "MD5OfMessageAttributes in a batch")

    code, _ = error_code(lambda: sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "same", "MessageBody": "a"}, {"Id": "same", "MessageBody": "b"}]))
    check(code.endswith("BatchEntryIdsNotDistinct"), f"duplicate ids error: {code}")
    code, _ = error_code(lambda: sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": f"x{i}", "MessageBody": "a"} for i in range(11)]))
    check(code.endswith("TooManyEntriesInBatchRequest"), f"11 entries error: {code}")

    messages = receive(url, 10, MessageAttributeNames=["All"])
    check_eq(sorted(m["Body"] for m in messages), sorted(e["MessageBody"] for e in entries), "bodies received")
    deleted = sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages[:9])
    ] + [{"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle"}])
    check_eq(sorted(e["Id"] for e in deleted["Successful"]), sorted(f"d{i}" for i in range(9)), "deleted ids")
    [failed] = deleted["Failed"]
    check_eq(failed["Id"], "bogus", "failed delete id")
    check_eq(failed["SenderFault"], True, "SenderFault of the failed delete")
    check(failed["Code"].endswith("ReceiptHandleIsInvalid"), f"code of the failed delete: {failed}")
    check_eq(counts(url), (0, 1, 0), "one message left in flight")
    last = sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "last", "ReceiptHandle": messages[9]["ReceiptHandle"]}])
    check_eq([e["Id"] for e in last["Successful"]], ["last"], "the last delete")
    check_eq(counts(url), (0, 0, 0), "counts after the batch delete")
    sqs.delete_queue(QueueUrl=url)


def test_change_visibility():
    url = create("vis", Attributes={"VisibilityTimeout": "600"})
    sqs.send_message(QueueUrl=url, MessageBody="again")
    [first] = receive(url, 1)
    check_eq(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []), [],
             "nothing visible while the message is in flight")
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    [second] = receive(url, 1, AttributeNames=["ApproximateReceiveCount"])
    check_eq(second["Body"], "again", "body of the returned message")
    check_eq(second["Attributes"]["ApproximateReceiveCount"], "2", "receive count after returning it")
    changed = sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
        {"Id": "a", "ReceiptHandle": second["ReceiptHandle"], "VisibilityTimeout": 0},
        {"Id": "b", "ReceiptHandle": "not-a-receipt-handle", "VisibilityTimeout": 0},
    ])
    check_eq([e["Id"] for e in changed["Successful"]], ["a"], "ChangeMessageVisibilityBatch successes")
    check_eq([e["Id"] for e in changed["Failed"]], ["b"], "ChangeMessageVisibilityBatch failures")
    [third] = receive(url, 1)
    check_eq(third["MessageId"], first["MessageId"], "the same message a third time")
    code, _ = error_code(lambda: sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=third["ReceiptHandle"], VisibilityTimeout=43201))
    check(code == "InvalidParameterValue", f"VisibilityTimeout above 12 hours: {code}")
    sqs.delete_queue(QueueUrl=url)


def test_queue_attributes():
    url = create("qattr")
    sqs.set_queue_attributes(QueueUrl=url, Attributes={
        "VisibilityTimeout": "120", "MessageRetentionPeriod": "3600", "DelaySeconds": "60",
        "ReceiveMessageWaitTimeSeconds": "1", "MaximumMessageSize": "2048",
    })
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    for key, value in {"VisibilityTimeout": "120", "MessageRetentionPeriod": "3600", "DelaySeconds": "60",
                       "ReceiveMessageWaitTimeSeconds": "1", "MaximumMessageSize": "2048"}.items():
        check_eq(attrs.get(key), value, f"attribute {key}")
    for key in ("QueueArn", "CreatedTimestamp", "LastModifiedTimestamp", "ApproximateNumberOfMessages"):
        check(key in attrs, f"{key} in {sorted(attrs)}")
    check_eq(attrs["QueueArn"].split(":")[-1], name("qattr"), "QueueArn names the queue")
    some = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["DelaySeconds", "VisibilityTimeout"])["Attributes"]
    check_eq(some, {"DelaySeconds": "60", "VisibilityTimeout": "120"}, "only the named attributes")
    code, _ = error_code(lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["NoSuchAttribute"]))
    check(code.endswith("InvalidAttributeName"), f"unknown attribute name: {code}")

    sqs.send_message(QueueUrl=url, MessageBody="delayed by the queue")
    check_eq(counts(url), (0, 0, 1), "a message delayed by the queue's DelaySeconds")
    code, _ = error_code(lambda: sqs.send_message(QueueUrl=url, MessageBody="x" * 2049))
    check_eq(code, "InvalidParameterValue", "a body over MaximumMessageSize")
    sqs.delete_queue(QueueUrl=url)


def test_tags():
    url = create("tags", tags={"team": "blue", "env": "test"})
    check_eq(sqs.list_queue_tags(QueueUrl=url).get("Tags"), {"team": "blue", "env": "test"}, "tags at creation")
    sqs.tag_queue(QueueUrl=url, Tags={"team": "red", "cost": "<&>"})
    check_eq(sqs.list_queue_tags(QueueUrl=url).get("Tags"), {"team": "red", "env": "test", "cost": "<&>"},
             "tags after TagQueue")
    sqs.untag_queue(QueueUrl=url, TagKeys=["env", "cost"])
    check_eq(sqs.list_queue_tags(QueueUrl=url).get("Tags"), {"team": "red"}, "tags after UntagQueue")
    sqs.untag_queue(QueueUrl=url, TagKeys=["team"])
    check_eq(sqs.list_queue_tags(QueueUrl=url).get("Tags", {}), {}, "no tags left")
    sqs.delete_queue(QueueUrl=url)


def test_dead_letter_queue_and_redrive():
    dlq = create("dlq")
    dlq_arn = arn_of(dlq)
    url = create("work", Attributes={
        "VisibilityTimeout": "600",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"}),
    })
    sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]
    check_eq(sources, [url], "ListDeadLetterSourceQueues")
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
                        ["Attributes"]["RedrivePolicy"])
    check_eq(policy["deadLetterTargetArn"], dlq_arn, "RedrivePolicy's target")
    check_eq(int(policy["maxReceiveCount"]), 1, "RedrivePolicy's maxReceiveCount")

    sqs.send_message(QueueUrl=url, MessageBody="poison", MessageAttributes={"a": ATTRIBUTES["kind"]})
    [message] = receive(url, 1)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    # The next receive on the source finds it over its maxReceiveCount and moves it to the DLQ.
    dead_letters = []

    def moved():
        again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
        check_eq(again, [], "a message past maxReceiveCount is not delivered again")
        dead_letters.extend(sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0, AttributeNames=["All"],
                                                MessageAttributeNames=["All"]).get("Messages", []))
        return dead_letters

    [dead] = wait_for("the message to reach the dead-letter queue", moved)
    check_eq(dead["MessageId"], message["MessageId"], "the dead-lettered message keeps its id")
    check_eq(dead["Body"], "poison", "dead-lettered body")
    check_eq(dead["MessageAttributes"], {"a": ATTRIBUTES["kind"]}, "dead-lettered attributes")
    check_eq(counts(url), (0, 0, 0), "the source queue is empty")
    sqs.change_message_visibility(QueueUrl=dlq, ReceiptHandle=dead["ReceiptHandle"], VisibilityTimeout=0)

    task = sqs.start_message_move_task(SourceArn=dlq_arn)
    check(task.get("TaskHandle"), f"StartMessageMoveTask returns a TaskHandle: {task}")
    [back] = receive(url, 1)
    check_eq(back["Body"], "poison", "the redriven message is back on its source queue")
    tasks = sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
    check(tasks and tasks[0]["SourceArn"] == dlq_arn, f"ListMessageMoveTasks: {tasks}")
    check(tasks[0]["Status"] in ("RUNNING", "COMPLETED"), f"move task status: {tasks[0]}")
    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=dlq)


def test_fifo_queue():
    url = sqs.create_queue(QueueName=name("order.fifo"),
                           Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    first = sqs.send_message(QueueUrl=url, MessageBody="one", MessageGroupId="g")
    check(first.get("SequenceNumber"), f"FIFO SendMessage returns a SequenceNumber: {first}")
    sqs.send_message(QueueUrl=url, MessageBody="one", MessageGroupId="g")  # a duplicate by content
    sqs.send_message(QueueUrl=url, MessageBody="two", MessageGroupId="g")
    [m1] = receive(url, 1, AttributeNames=["All"])
    check_eq(m1["Body"], "one", "first of the group")
    check_eq(m1["Attributes"].get("MessageGroupId"), "g", "MessageGroupId attribute")
    check_eq(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []), [],
             "the group is held while its first message is in flight")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m1["ReceiptHandle"])
    [m2] = receive(url, 1)
    check_eq(m2["Body"], "two", "second of the group")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m2["ReceiptHandle"])
    check_eq(counts(url), (0, 0, 0), "the duplicate was never queued")
    sqs.delete_queue(QueueUrl=url)


def test_purge():
    url = create("purge")
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(5)])
    check_eq(counts(url)[0], 5, "visible before purge")
    sqs.purge_queue(QueueUrl=url)
    check_eq(counts(url), (0, 0, 0), "counts after purge")
    check_eq(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []), [], "receive after purge")
    sqs.delete_queue(QueueUrl=url)


def test_errors():
    missing_url = ENDPOINT.rstrip("/") + "/000000000000/" + name("missing")
    for what, call in [
        ("GetQueueUrl", lambda: sqs.get_queue_url(QueueName=name("missing"))),
        ("SendMessage", lambda: sqs.send_message(QueueUrl=missing_url, MessageBody="x")),
        ("ReceiveMessage", lambda: sqs.receive_message(QueueUrl=missing_url)),
        ("GetQueueAttributes", lambda: sqs.get_queue_attributes(QueueUrl=missing_url, AttributeNames=["All"])),
    ]:
        try:
            call()
        except sqs.exceptions.QueueDoesNotExist as err:
            status = err.response["ResponseMetadata"]["HTTPStatusCode"]
            check_eq(status, 400, f"HTTP status of {what} on a missing queue")
            check(err.response["Error"].get("Message"), f"{what}: the error has a message")
        else:
            raise AssertionError(f"{what} on a missing queue did not raise QueueDoesNotExist")

    url = create("errors")
    code, _ = error_code(lambda: sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11))
    check_eq(code, "InvalidParameterValue", "MaxNumberOfMessages=11")
    code, _ = error_code(lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=21))
    check_eq(code, "InvalidParameterValue", "WaitTimeSeconds=21")
    code, _ = error_code(lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-receipt-handle"))
    check(code.endswith("ReceiptHandleIsInvalid"), f"DeleteMessage with a bad receipt handle: {code}")
    code, _ = error_code(lambda: sqs.send_message(QueueUrl=url, MessageBody="bad \x01 char"))
    check_eq(code, "InvalidMessageContents", "a body with a character SQS forbids")
    code, _ = error_code(lambda: sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes={
        "a": {"DataType": "Number", "StringValue": "not a number"}}))
    check_eq(code, "InvalidParameterValue", "a Number attribute that is not a number")
    sqs.delete_queue(QueueUrl=url)


def test_binary_attribute_is_sent_as_base64():
    # botocore base64-encodes blobs on the wire; the server must hand back the same bytes.
    url = create("bin")
    payload = b"\x00\xff<&>\r\n" + bytes(range(128, 256))
    sqs.send_message(QueueUrl=url, MessageBody="b", MessageAttributes={"b": {"DataType": "Binary.gz", "BinaryValue": payload}})
    [message] = receive(url, 1, MessageAttributeNames=["All"])
    check_eq(message["MessageAttributes"]["b"], {"DataType": "Binary.gz", "BinaryValue": payload}, "binary attribute")
    check_eq(base64.b64encode(message["MessageAttributes"]["b"]["BinaryValue"]), base64.b64encode(payload),
             "binary attribute bytes")
    sqs.delete_queue(QueueUrl=url)



def test_permissions_and_lapsed_receipts():
    """AddPermission/RemovePermission write the Policy (the query protocol spells the lists
    AWSAccountId.N and ActionName.N); a receipt handle whose visibility ran out still deletes."""
    url = create("perm", Attributes={"VisibilityTimeout": "1"})
    sqs.add_permission(QueueUrl=url, Label="from-b", AWSAccountIds=["111122223333", "444455556666"],
                       Actions=["SendMessage", "ReceiveMessage"])
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    [statement] = policy["Statement"]
    check_eq(statement["Sid"], "from-b", "statement id")
    check_eq(sorted(statement["Principal"]["AWS"]),
             ["arn:aws:iam::111122223333:root", "arn:aws:iam::444455556666:root"], "principals")
    check_eq(statement["Action"], ["SQS:SendMessage", "SQS:ReceiveMessage"], "actions")
    sqs.remove_permission(QueueUrl=url, Label="from-b")
    check("Policy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"],
          "no Policy once its last statement is removed")
    sqs.send_message(QueueUrl=url, MessageBody="slow")
    [message] = receive(url, 1)
    wait_for("the visibility to run out", lambda: counts(url)[0] == 1)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    check_eq(counts(url), (0, 0, 0), "deleted by its lapsed receipt handle")
    sqs.delete_queue(QueueUrl=url)


if __name__ == "__main__":
    run([
        test_protocol_is_the_expected_one,
        test_create_get_list_delete_queue,
        test_send_and_receive_with_attributes,
        test_batches,
        test_change_visibility,
        test_queue_attributes,
        test_tags,
        test_dead_letter_queue_and_redrive,
        test_fifo_queue,
        test_purge,
        test_errors,
        test_binary_attribute_is_sent_as_base64,
        test_permissions_and_lapsed_receipts,
    ], LABEL)
