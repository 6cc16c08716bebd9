"""Helpers shared by the client scripts: a tiny test runner and SQS's MD5 digests."""

import hashlib
import os
import struct
import sys
import time
import traceback
import uuid

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "")
if not ENDPOINT:
    sys.exit("AWS_ENDPOINT_URL is not set: point it at a running `coalmine queue serve`, "
             "e.g. AWS_ENDPOINT_URL=http://127.0.0.1:9324")
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
ACCESS_KEY = os.environ.get("AWS_ACCESS_KEY_ID", "AKIDCLIENTTEST")
SECRET_KEY = os.environ.get("AWS_SECRET_ACCESS_KEY", "secret")
# Queue names of one run share this prefix, so runs against one server never collide.
RUN = "t" + uuid.uuid4().hex[:8]


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_of_attributes(attributes: dict) -> str:
    """MD5OfMessageAttributes as SQS computes it: names sorted; for each, length-prefixed
    name, data type, then a transport byte (1 string, 2 binary) and the length-prefixed value."""
    digest = hashlib.md5()

    def put(data: bytes):
        digest.update(struct.pack(">I", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        value = attributes[name]
        put(name.encode())
        put(value["DataType"].encode())
        if "StringValue" in value:
            digest.update(b"\x01")
            put(value["StringValue"].encode())
        elif "BinaryValue" in value:
            digest.update(b"\x02")
            binary = value["BinaryValue"]
            put(binary if isinstance(binary, bytes) else binary.encode())
        else:
            raise ValueError(f"attribute {name} has neither StringValue nor BinaryValue")
    return digest.hexdigest()


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def check_eq(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def wait_for(what, attempt, timeout=30.0):
    """Call attempt() until it returns something truthy, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def run(tests, label):
    """Run each test function, print a line per test and a closing count; exit 1 on failure."""
    passed = failed = 0
    print(f"{label}: endpoint {ENDPOINT}, run {RUN}", flush=True)
    for test in tests:
        started = time.monotonic()
        try:
            test()
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL {label} {test.__name__} ({time.monotonic() - started:.2f}s)", flush=True)
            traceback.print_exc()
            sys.stdout.flush()
        else:
            passed += 1
            print(f"ok   {label} {test.__name__} ({time.monotonic() - started:.2f}s)", flush=True)
    print(f"{label}: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
