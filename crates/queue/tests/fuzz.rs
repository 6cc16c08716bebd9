//! Generated requests, per protocol: parameter names and values built from the SQS model's
//! words and from arbitrary text, deep and shallow, valid and not. Whatever arrives, the broker
//! answers with a client error or a result — never a panic, never a server error — and keeps
//! serving. Each property runs a bounded number of cases in the normal test run.

mod common;

use std::collections::BTreeMap;

use coalmine_queue::{protocol::query, Broker, BrokerConfig, Ctx, Durability};
use proptest::prelude::*;
use serde_json::Value;

const ACTIONS: &[&str] = &[
    "CreateQueue",
    "GetQueueUrl",
    "ListQueues",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "ListDeadLetterSourceQueues",
    "StartMessageMoveTask",
    "ListMessageMoveTasks",
    "CancelMessageMoveTask",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "AddPermission",
    "RemovePermission",
    "Frobnicate",
];

/// Words of the SQS model, as both protocols spell them.
const WORDS: &[&str] = &[
    "QueueUrl", "QueueName", "MessageBody", "Attribute", "Attributes", "Name", "Value", "MessageAttribute",
    "MessageAttributes", "DataType", "StringValue", "BinaryValue", "StringListValue", "Entries", "Id",
    "SendMessageBatchRequestEntry", "DeleteMessageBatchRequestEntry", "ChangeMessageVisibilityBatchRequestEntry",
    "ReceiptHandle", "VisibilityTimeout", "WaitTimeSeconds", "MaxNumberOfMessages", "AttributeName",
    "MessageAttributeName", "MessageGroupId", "MessageDeduplicationId", "DelaySeconds", "Tag", "Tags", "Key",
    "TagKey", "TagKeys", "SourceArn", "DestinationArn", "TaskHandle", "MaxResults", "NextToken", "Label",
    "AWSAccountId", "ActionName", "ReceiveRequestAttemptId", "1", "2", "10", "11", "0", "-1", "99999999999999999999", "",
];

fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("http://127.0.0.1:1/000000000000/fz".to_string()),
        Just("http://127.0.0.1:1/000000000000/fz.fifo".to_string()),
        Just("arn:aws:sqs:us-east-1:000000000000:fz".to_string()),
        Just("String".to_string()),
        Just("Binary".to_string()),
        Just("Number".to_string()),
        Just("All".to_string()),
        Just("AAAAAAAAAAEAAAAB".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "\\PC{0,24}",
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(WORDS), 1..10).prop_map(|w| w.join(".")),
        "[A-Za-z0-9.]{0,40}",
        (1usize..40_000).prop_map(|n| "a.".repeat(n)),
    ]
}

fn query_params() -> impl Strategy<Value = Vec<(String, String)>> {
    (proptest::sample::select(ACTIONS), proptest::collection::vec((key(), values()), 0..16)).prop_map(|(a, mut p)| {
        p.insert(0, ("Action".to_string(), a.to_string()));
        p
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
        values().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(proptest::sample::select(WORDS).prop_map(str::to_string), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_request() -> impl Strategy<Value = (String, Value)> {
    (
        proptest::sample::select(ACTIONS).prop_map(str::to_string),
        proptest::collection::btree_map(proptest::sample::select(WORDS).prop_map(str::to_string), json_value(), 0..10),
    )
        .prop_map(|(a, m)| (a, Value::Object(m.into_iter().collect())))
}

fn broker() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::new(dir.path());
    cfg.durability = Durability::None;
    let b = Broker::open(cfg).unwrap();
    (b, dir)
}

fn ensure(b: &Broker) {
    b.ensure_queue("fz", &BTreeMap::new()).unwrap();
    b.ensure_queue("fz.fifo", &BTreeMap::new()).unwrap();
    let mut ctx = Ctx::new("AKIDFUZZFUZZFUZZ", "127.0.0.1:1");
    let _ = b.handle("SendMessage", &serde_json::json!({"QueueUrl": "http://127.0.0.1:1/000000000000/fz", "MessageBody": "m"}), &mut ctx);
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(400))]

    /// The query protocol's parser and then the engine, directly.
    #[test]
    fn query_requests_never_crash_the_engine(params in query_params()) {
        static B: std::sync::OnceLock<(Broker, tempfile::TempDir)> = std::sync::OnceLock::new();
        let (b, _) = B.get_or_init(broker);
        ensure(b);
        match query::parse_request(&params) {
            Err(e) => prop_assert!(e.status < 500, "{e}"),
            Ok((action, req)) => {
                let mut ctx = Ctx::new("AKIDFUZZFUZZFUZZ", "127.0.0.1:1");
                if let Err(e) = b.handle(&action, &req, &mut ctx) {
                    prop_assert!(e.status < 500, "{action} {req}: {e}");
                }
            }
        }
    }

    /// The JSON protocol's requests (any JSON under the model's member names), directly.
    #[test]
    fn json_requests_never_crash_the_engine((action, req) in json_request()) {
        static B: std::sync::OnceLock<(Broker, tempfile::TempDir)> = std::sync::OnceLock::new();
        let (b, _) = B.get_or_init(broker);
        ensure(b);
        let mut ctx = Ctx::new("AKIDFUZZFUZZFUZZ", "127.0.0.1:1");
        if let Err(e) = b.handle(&action, &req, &mut ctx) {
            prop_assert!(e.status < 500, "{action} {req}: {e}");
        }
    }
}

/// Both protocols over HTTP against a served broker, with arbitrary bodies too.
#[test]
fn requests_over_http_never_crash_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(common::start_with(tempfile::tempdir().unwrap(), |c| c.durability = Durability::None));
    ensure(&s.broker);
    let http = reqwest::Client::new();
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDFUZZFUZZFUZZ/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00";
    let mut runner = proptest::test_runner::TestRunner::new(config(120));
    runner
        .run(&(query_params(), json_request(), proptest::collection::vec(any::<u8>(), 0..256)), |(params, (action, req), raw)| {
            rt.block_on(async {
                let form = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
                // (a URL stays under what HTTP clients send at all)
                let get_query = if form.len() < 30_000 { form.clone() } else { "Action=ListQueues".to_string() };
                let answers = [
                    http.post(&s.url).header("authorization", auth).header("content-type", "application/x-www-form-urlencoded").body(form.clone()),
                    http.get(format!("{}/000000000000/fz?{}", s.url, get_query)).header("authorization", auth),
                    http.post(&s.url).header("authorization", auth).header("x-amz-target", format!("AmazonSQS.{action}")).body(req.to_string()),
                    http.post(&s.url).header("authorization", auth).header("x-amz-target", format!("AmazonSQS.{action}")).body(raw.clone()),
                    http.post(&s.url).header("authorization", auth).body(raw),
                ];
                for r in answers {
                    let r = r.send().await.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                    let status = r.status().as_u16();
                    prop_assert!(status < 500 || status == 431, "status {status}: {}", r.text().await.unwrap_or_default());
                }
                Ok(())
            })
        })
        .unwrap();
    rt.block_on(async {
        let c = common::client(&s.url, "AKIDFUZZFUZZFUZZ");
        c.list_queues().send().await.expect("still serving");
    });
}
