//! `coalmine queue serve` killed with SIGKILL under load loses nothing it acknowledged.
//!
//! What "acknowledged" means at the moment of the kill: a send or delete whose answer reached
//! the client was committed. A delete whose request went out but whose answer never came back
//! (the kill cut it) is *in doubt*: the server may have committed it or not, so its messages
//! may be gone or may come back after the restart — either is right, but never both, and a
//! message whose delete *was* answered never comes back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry};

#[path = "support/serve.rs"]
mod serve;

use serve::serve;

fn client(url: &str) -> aws_sdk_sqs::Client {
    serve::client(url, "AKIDKILL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    let c = client(&server.url);
    let url = c
        .create_queue()
        .queue_name("durable")
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();

    let acked_sent = Arc::new(Mutex::new(HashSet::<String>::new()));
    let acked_deleted = Arc::new(Mutex::new(HashSet::<String>::new()));
    // Bodies whose delete was sent and not (yet) answered.
    let in_doubt = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (c, url, acked) = (c.clone(), url.clone(), acked_sent.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0.. {
                let mut req = c.send_message_batch().queue_url(&url);
                for i in 0..10 {
                    req = req.entries(SendMessageBatchRequestEntry::builder().id(format!("e{i}")).message_body(format!("p{p}-b{b}-{i}")).build().unwrap());
                }
                let Ok(out) = req.send().await else { break };
                let mut a = acked.lock().unwrap();
                for s in out.successful() {
                    a.insert(format!("p{p}-b{b}-{}", &s.id()[1..]));
                }
            }
        }));
    }
    for _ in 0..2 {
        let (c, url, deleted, in_doubt) = (c.clone(), url.clone(), acked_deleted.clone(), in_doubt.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(out) = c.receive_message().queue_url(&url).max_number_of_messages(10).send().await else { break };
                if out.messages().is_empty() {
                    continue;
                }
                let bodies: Vec<String> = out.messages().iter().map(|m| m.body().unwrap().to_string()).collect();
                in_doubt.lock().unwrap().extend(bodies.iter().cloned());
                let mut req = c.delete_message_batch().queue_url(&url);
                for (i, m) in out.messages().iter().enumerate() {
                    req = req.entries(DeleteMessageBatchRequestEntry::builder().id(format!("d{i}")).receipt_handle(m.receipt_handle().unwrap()).build().unwrap());
                }
                // Unanswered: the batch stays in doubt.
                let Ok(res) = req.send().await else { break };
                let mut d = deleted.lock().unwrap();
                let mut doubt = in_doubt.lock().unwrap();
                for s in res.successful() {
                    let i: usize = s.id()[1..].parse().unwrap();
                    d.insert(bodies[i].clone());
                }
                // Answered: every entry is settled (deleted, or failed and still there).
                for b in &bodies {
                    doubt.remove(b);
                }
            }
        }));
    }
    // run until a good amount was acknowledged, then SIGKILL the server mid-load
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_sent.lock().unwrap().len() < 3000 || acked_deleted.lock().unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let sent = acked_sent.lock().unwrap().clone();
    let deleted = acked_deleted.lock().unwrap().clone();
    let doubt = in_doubt.lock().unwrap().clone();
    assert!(doubt.is_disjoint(&deleted), "a body is both acknowledged-deleted and in doubt");

    let server2 = serve(dir.path(), &[]);
    let c = client(&server2.url);
    let url = c.get_queue_url().queue_name("durable").send().await.unwrap().queue_url().unwrap().to_string();
    // Every acknowledged send whose delete was neither answered nor in doubt must come back.
    let must_find: HashSet<&String> = sent.iter().filter(|b| !deleted.contains(*b) && !doubt.contains(*b)).collect();
    let mut found = HashSet::new();
    let mut duplicates = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !must_find.iter().all(|b| found.contains(*b)) {
        assert!(
            Instant::now() < deadline,
            "after restart, {} acknowledged messages are missing (e.g. {:?})",
            must_find.iter().filter(|b| !found.contains(**b)).count(),
            must_find.iter().find(|b| !found.contains(**b))
        );
        // A visibility timeout far above a loaded machine's pauses: a message comes back only if
        // its delete below failed, so a second sighting is a real duplicate.
        let out = c
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(600)
            .send()
            .await
            .unwrap();
        let mut req = c.delete_message_batch().queue_url(&url);
        for (i, m) in out.messages().iter().enumerate() {
            let body = m.body().unwrap().to_string();
            assert!(!deleted.contains(&body), "message {body} came back although its delete was acknowledged");
            if !found.insert(body) {
                duplicates += 1;
            }
            req = req.entries(DeleteMessageBatchRequestEntry::builder().id(format!("d{i}")).receipt_handle(m.receipt_handle().unwrap()).build().unwrap());
        }
        if !out.messages().is_empty() {
            req.send().await.unwrap();
        }
    }
    // Drain what is left (in-doubt messages that came back; messages received just before the
    // kill turn visible again within the 2 s visibility timeout) until three receives in a row
    // find nothing.
    let mut empty = 0;
    while empty < 3 {
        let out = c.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).visibility_timeout(600).send().await.unwrap();
        if out.messages().is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in out.messages() {
            let body = m.body().unwrap().to_string();
            assert!(!deleted.contains(&body), "message {body} came back although its delete was acknowledged");
            if !found.insert(body) {
                duplicates += 1;
            }
            c.delete_message().queue_url(&url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
        }
    }
    let unknown: Vec<&String> = found.iter().filter(|b| !sent.contains(*b) && !doubt.contains(*b)).collect();
    // A send whose answer was lost may have been committed: such a body is neither acknowledged
    // nor in doubt, and may appear; its name says which producer batch it was.
    let in_doubt_back = doubt.iter().filter(|b| found.contains(*b)).count();
    let in_doubt_gone = doubt.len() - in_doubt_back;
    assert_eq!(duplicates, 0, "messages received twice after the restart");
    // One machine-readable line for scripts/stress-durability.sh.
    eprintln!(
        "durability: sent {} deleted {} in_doubt {} (back {in_doubt_back}, gone {in_doubt_gone}) found {} unacknowledged_sends_found {} lost 0 duplicates {duplicates}",
        sent.len(),
        deleted.len(),
        doubt.len(),
        found.len(),
        unknown.len()
    );
}
