//! Property test of the message state machine, on the broker itself (no HTTP): a message in
//! flight is never handed to a second receiver, and nothing disappears without a delete or a
//! move to the dead-letter queue, across restarts too.

use std::collections::{BTreeMap, HashMap, HashSet};

use coalmine_queue::{Broker, BrokerConfig, Ctx, Durability};
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Step {
    Send(usize),
    Receive(usize),
    Delete(usize),
    Return(usize),
    StaleDelete(usize),
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..4).prop_map(Step::Send),
        4 => (1usize..6).prop_map(Step::Receive),
        2 => any::<usize>().prop_map(Step::Delete),
        3 => any::<usize>().prop_map(Step::Return),
        1 => any::<usize>().prop_map(Step::StaleDelete),
        1 => Just(Step::Restart),
    ]
}

const URL: &str = "http://127.0.0.1:1/000000000000/p";

fn open(dir: &std::path::Path) -> Broker {
    let mut cfg = BrokerConfig::new(dir);
    cfg.durability = Durability::None;
    Broker::open(cfg).unwrap()
}

fn call(b: &Broker, action: &str, req: Value) -> Value {
    let mut ctx = Ctx::new("AKIDPROP", "127.0.0.1:1");
    b.handle(action, &req, &mut ctx).unwrap_or_else(|e| panic!("{action}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn no_double_delivery_and_nothing_lost(steps in proptest::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        b.ensure_queue("p-dlq", &BTreeMap::new()).unwrap();
        let policy = json!({"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:p-dlq", "maxReceiveCount": 2}).to_string();
        b.ensure_queue("p", &BTreeMap::from([
            ("VisibilityTimeout".to_string(), "600".to_string()),
            ("RedrivePolicy".to_string(), policy),
        ])).unwrap();

        let mut sent: HashSet<String> = HashSet::new();
        let mut deleted: HashSet<String> = HashSet::new();
        // id -> current receipt handle of messages in flight
        let mut in_flight: HashMap<String, String> = HashMap::new();
        // handles of messages received again since: they delete nothing
        let mut stale: Vec<(String, String)> = Vec::new();
        // id -> the last receipt handle of a message returned and not received since: as on
        // SQS, that handle still deletes it
        let mut returned: HashMap<String, String> = HashMap::new();
        let mut n = 0;
        for s in steps {
            match s {
                Step::Send(k) => {
                    for _ in 0..k {
                        n += 1;
                        let out = call(&b, "SendMessage", json!({"QueueUrl": URL, "MessageBody": format!("m{n}")}));
                        sent.insert(out["MessageId"].as_str().unwrap().to_string());
                    }
                }
                Step::Receive(k) => {
                    let out = call(&b, "ReceiveMessage", json!({"QueueUrl": URL, "MaxNumberOfMessages": k}));
                    let msgs = out.get("Messages").and_then(Value::as_array).cloned().unwrap_or_default();
                    prop_assert!(msgs.len() <= k);
                    let mut seen = HashSet::new();
                    for m in msgs {
                        let id = m["MessageId"].as_str().unwrap().to_string();
                        prop_assert!(seen.insert(id.clone()), "message {id} twice in one receive");
                        prop_assert!(!in_flight.contains_key(&id), "message {id} delivered while in flight");
                        prop_assert!(sent.contains(&id) && !deleted.contains(&id), "unknown or deleted message {id} delivered");
                        if let Some(h) = returned.remove(&id) {
                            stale.push((id.clone(), h));
                        }
                        in_flight.insert(id, m["ReceiptHandle"].as_str().unwrap().to_string());
                    }
                }
                Step::Delete(i) | Step::Return(i) if !in_flight.is_empty() => {
                    let mut ids: Vec<String> = in_flight.keys().cloned().collect();
                    ids.sort();
                    let id = ids[i % ids.len()].clone();
                    let h = in_flight.remove(&id).unwrap();
                    if matches!(s, Step::Delete(_)) {
                        call(&b, "DeleteMessage", json!({"QueueUrl": URL, "ReceiptHandle": h}));
                        deleted.insert(id);
                    } else {
                        call(&b, "ChangeMessageVisibility", json!({"QueueUrl": URL, "ReceiptHandle": h, "VisibilityTimeout": 0}));
                        returned.insert(id, h);
                    }
                }
                Step::StaleDelete(i) if i % 2 == 1 && !returned.is_empty() => {
                    // the last handle of a returned message, not received since, deletes it
                    let mut ids: Vec<String> = returned.keys().cloned().collect();
                    ids.sort();
                    let id = ids[i % ids.len()].clone();
                    let h = returned.remove(&id).unwrap();
                    call(&b, "DeleteMessage", json!({"QueueUrl": URL, "ReceiptHandle": h}));
                    deleted.insert(id);
                }
                Step::StaleDelete(i) if !stale.is_empty() => {
                    // an old receipt handle must not delete a message someone else received since
                    let (_, h) = stale[i % stale.len()].clone();
                    call(&b, "DeleteMessage", json!({"QueueUrl": URL, "ReceiptHandle": h}));
                }
                Step::Restart => {
                    b.close();
                    drop(b);
                    b = open(dir.path());
                }
                _ => {}
            }
            // conservation: every sent message is deleted, in the source queue or dead-lettered
            let st = b.queue_stats("p").unwrap();
            let dl = b.dead_letters("p-dlq").unwrap();
            let dl_ids: HashSet<String> = dl.iter().map(|d| d.message_id.clone()).collect();
            // dead-lettered: in another queue now, out of reach of the source queue's handles
            returned.retain(|id, _| !dl_ids.contains(id));
            prop_assert_eq!(st.in_flight as usize, in_flight.len());
            prop_assert_eq!((st.visible + st.in_flight + st.delayed) as usize + dl.len() + deleted.len(), sent.len());
            prop_assert!(dl_ids.is_disjoint(&deleted));
            for id in &dl_ids {
                prop_assert!(!in_flight.contains_key(id));
            }
            let in_source: HashSet<String> = sent.difference(&deleted).filter(|i| !dl_ids.contains(*i)).cloned().collect();
            prop_assert_eq!(in_source.len() as u64, st.visible + st.in_flight + st.delayed);
        }
        b.close();
    }
}

#[test]
fn one_broker_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let err = Broker::open(BrokerConfig::new(dir.path())).err().expect("a second broker on the same directory is refused");
    assert!(err.to_string().contains("already uses the data directory"), "{err}");
    a.close();
    let b = open(dir.path());
    b.close();
}
