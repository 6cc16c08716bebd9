#!/usr/bin/env python3
"""The query protocol on the wire, with nothing but the standard library: form-encoded requests
(in a POST body, in a GET query string, to the queue's own URL) and the XML SQS answers with,
read by a real XML parser. Covers what the SDKs hide: the namespace, the request id, the error
document, the numbered parameters in the spellings the SDKs and the SQS documentation use.

    AWS_ENDPOINT_URL=http://127.0.0.1:9324 python3 sqs_query_raw.py
"""

import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sqs_checks import ACCESS_KEY, ENDPOINT, RUN, check, check_eq, run, wait_for  # noqa: E402

NS = "http://queue.amazonaws.com/doc/2012-11-05/"
AUTH = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20231101/us-east-1/sqs/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=0000")


def q(tag):
    """`a/b` in the SQS namespace, for ElementTree paths."""
    return "/".join(f"{{{NS}}}{part}" for part in tag.split("/"))


def call(params, url=None, method="POST"):
    """Send one query-protocol request; return (HTTP status, parsed XML root, raw text)."""
    url = url or ENDPOINT
    data = urllib.parse.urlencode(params).encode()
    if method == "GET":
        request = urllib.request.Request(f"{url}?{data.decode()}", method="GET")
    else:
        request = urllib.request.Request(url, data=data, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
    request.add_header("Authorization", AUTH)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text, headers = response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as err:
        status, text, headers = err.code, err.read().decode(), err.headers
    root = ET.fromstring(text)
    request_id = root.findtext(q("ResponseMetadata/RequestId")) or root.findtext(q("RequestId"))
    check(request_id, f"a RequestId in {text}")
    header_id = headers.get("x-amzn-RequestId")
    if header_id:
        check_eq(request_id, header_id, "RequestId in the body and the x-amzn-RequestId header")
    return status, root, text


def ok(params, **kwargs):
    status, root, text = call(params, **kwargs)
    check_eq(status, 200, f"status of {params.get('Action')} ({text})")
    check_eq(root.tag, f"{{{NS}}}{params['Action']}Response", "root element")
    return root


def error(params, **kwargs):
    status, root, text = call(params, **kwargs)
    check_eq(root.tag, f"{{{NS}}}ErrorResponse", f"an ErrorResponse ({text})")
    return status, root.findtext(q("Error/Type")), root.findtext(q("Error/Code")), root.findtext(q("Error/Message"))


def create(suffix, **params):
    root = ok({"Action": "CreateQueue", "QueueName": f"{RUN}-raw-{suffix}", **params})
    return root.findtext(q("CreateQueueResult/QueueUrl"))


def test_post_get_and_queue_path():
    url = create("ways")
    check(url.endswith(f"/{RUN}-raw-ways"), f"QueueUrl {url}")
    ok({"Action": "SendMessage", "QueueUrl": url, "MessageBody": "posted"})
    ok({"Action": "SendMessage", "QueueUrl": url, "MessageBody": "by GET"}, method="GET")
    # Older SDKs post to the queue's URL and leave QueueUrl out.
    ok({"Action": "SendMessage", "MessageBody": "to the path"}, url=url)
    root = ok({"Action": "GetQueueAttributes", "AttributeName.1": "ApproximateNumberOfMessages"}, url=url)
    attrs = {a.findtext(q("Name")): a.findtext(q("Value")) for a in root.iter(q("Attribute"))}
    check_eq(attrs, {"ApproximateNumberOfMessages": "3"}, "GetQueueAttributes on the queue's path")
    ok({"Action": "DeleteQueue", "QueueUrl": url})


def test_every_allowed_character_round_trips():
    url = create("chars")
    body = "".join(["\t\n\r", " <>&\"'", "".join(chr(c) for c in range(0x20, 0x7F)), "é\u07ff\ud7ff\ue000\ufffd",
                    "\U00010000\U0010ffff", "\r\n\r"])
    root = ok({"Action": "SendMessage", "QueueUrl": url, "MessageBody": body,
               "MessageAttribute.1.Name": "s", "MessageAttribute.1.Value.DataType": "String",
               "MessageAttribute.1.Value.StringValue": "a\r<&>b"})
    check_eq(root.findtext(q("SendMessageResult/MD5OfMessageBody")), hashlib.md5(body.encode()).hexdigest(),
             "MD5OfMessageBody")
    got = []
    wait_for("the message", lambda: got.extend(ok({
        "Action": "ReceiveMessage", "QueueUrl": url, "MessageAttributeName.1": "All", "WaitTimeSeconds": "1",
    }).iter(q("Message"))) or got)
    [message] = got
    check_eq(message.findtext(q("Body")), body, "the body, CRs and all")
    [attribute] = message.findall(q("MessageAttribute"))
    check_eq(attribute.findtext(q("Name")), "s", "attribute name")
    check_eq(attribute.findtext(q("Value/StringValue")), "a\r<&>b", "attribute value")
    check_eq(attribute.findtext(q("Value/DataType")), "String", "attribute type")
    status, kind, code, _ = error({"Action": "SendMessage", "QueueUrl": url, "MessageBody": "bell \x07"})
    check_eq((status, kind, code), (400, "Sender", "InvalidMessageContents"), "a character SQS forbids")
    ok({"Action": "DeleteQueue", "QueueUrl": url})


def test_numbered_parameters_in_both_spellings():
    url = create("tags", **{"Tag.1.Key": "a", "Tag.1.Value": "1", "Attribute.1.Name": "DelaySeconds",
                            "Attribute.1.Value": "0"})
    ok({"Action": "TagQueue", "QueueUrl": url, "Tags.1.Key": "b", "Tags.1.Value": "2"})  # botocore's spelling
    ok({"Action": "TagQueue", "QueueUrl": url, "Tag.1.Key": "c", "Tag.1.Value": "<3>"})  # the documentation's
    root = ok({"Action": "ListQueueTags", "QueueUrl": url})
    tags = {t.findtext(q("Key")): t.findtext(q("Value")) for t in root.iter(q("Tag"))}
    check_eq(tags, {"a": "1", "b": "2", "c": "<3>"}, "tags")
    ok({"Action": "UntagQueue", "QueueUrl": url, "TagKey.1": "a", "TagKey.2": "c"})
    root = ok({"Action": "ListQueueTags", "QueueUrl": url})
    check_eq([t.findtext(q("Key")) for t in root.iter(q("Tag"))], ["b"], "tags after UntagQueue")

    # Entries numbered past 9 keep their numeric order.
    params = {"Action": "SendMessageBatch", "QueueUrl": url}
    for n in range(1, 11):
        params[f"SendMessageBatchRequestEntry.{n}.Id"] = f"e{n}"
        params[f"SendMessageBatchRequestEntry.{n}.MessageBody"] = f"body {n}"
    root = ok(params)
    ids = [e.findtext(q("Id")) for e in root.iter(q("SendMessageBatchResultEntry"))]
    check_eq(sorted(ids), sorted(f"e{n}" for n in range(1, 11)), "batch result ids")
    for entry in root.iter(q("SendMessageBatchResultEntry")):
        n = entry.findtext(q("Id"))[1:]
        check_eq(entry.findtext(q("MD5OfMessageBody")), hashlib.md5(f"body {n}".encode()).hexdigest(), f"MD5 of e{n}")
    ok({"Action": "DeleteQueue", "QueueUrl": url})


def test_batch_error_entries():
    url = create("batcherr")
    root = ok({"Action": "DeleteMessageBatch", "QueueUrl": url,
               "DeleteMessageBatchRequestEntry.1.Id": "bad", "DeleteMessageBatchRequestEntry.1.ReceiptHandle": "nope"})
    [failed] = root.findall(q("DeleteMessageBatchResult/BatchResultErrorEntry"))
    check_eq(failed.findtext(q("Id")), "bad", "failed entry id")
    check_eq(failed.findtext(q("SenderFault")), "true", "SenderFault")
    check(failed.findtext(q("Code")).endswith("ReceiptHandleIsInvalid"), f"code {failed.findtext(q('Code'))}")
    status, kind, code, _ = error({"Action": "SendMessageBatch", "QueueUrl": url})
    check_eq((status, code), (400, "AWS.SimpleQueueService.EmptyBatchRequest"), "a batch with no entries")
    status, kind, code, _ = error({"Action": "SendMessageBatch", "QueueUrl": url,
                                   "SendMessageBatchRequestEntry.1.Id": "x", "SendMessageBatchRequestEntry.1.MessageBody": "a",
                                   "SendMessageBatchRequestEntry.2.Id": "x", "SendMessageBatchRequestEntry.2.MessageBody": "b"})
    check_eq((status, code), (400, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"), "duplicate batch ids")
    ok({"Action": "DeleteQueue", "QueueUrl": url})


def test_errors_as_sqs_writes_them():
    missing = ENDPOINT.rstrip("/") + f"/000000000000/{RUN}-raw-missing"
    status, kind, code, message = error({"Action": "SendMessage", "QueueUrl": missing, "MessageBody": "x"})
    check_eq((status, kind, code), (400, "Sender", "AWS.SimpleQueueService.NonExistentQueue"), "a missing queue")
    check(message, "the error has a message")
    status, kind, code, message = error({"QueueName": "no-action"})
    check_eq((status, kind, code), (400, "Sender", "MissingAction"), "no Action")
    status, kind, code, message = error({"Action": "SummonQueue"})
    check_eq((status, kind, code), (400, "Sender", "InvalidAction"), "an unknown Action")
    check("SummonQueue" in message, f"the message names the action: {message}")
    url = create("errs")
    status, kind, code, message = error({"Action": "ReceiveMessage", "QueueUrl": url, "WaitTimeSeconds": "soon"})
    check_eq((status, code), (400, "InvalidParameterValue"), "a WaitTimeSeconds that is not a number")
    check("WaitTimeSeconds" in message, f"the message names the parameter: {message}")
    status, kind, code, message = error({"Action": "SendMessage", "QueueUrl": url})
    check_eq((status, code), (400, "MissingParameter"), "SendMessage without MessageBody")
    check("MessageBody" in message, f"the message names the parameter: {message}")
    status, kind, code, message = error({"Action": "SetQueueAttributes", "QueueUrl": url, "Attribute.1.Value": "5"})
    check_eq((status, code), (400, "MissingParameter"), "an attribute value without its name")
    check("Attribute.1.Name" in message, f"the message names the parameter: {message}")
    ok({"Action": "DeleteQueue", "QueueUrl": url})


if __name__ == "__main__":
    run([
        test_post_get_and_queue_path,
        test_every_allowed_character_round_trips,
        test_numbered_parameters_in_both_spellings,
        test_batch_error_entries,
        test_errors_as_sqs_writes_them,
    ], "query-raw")
