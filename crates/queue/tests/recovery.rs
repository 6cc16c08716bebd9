//! The store fails a write (a full disk, injected at the store's commit) and then works again:
//! the refused change is answered with a server error, is not kept or counted, and the broker
//! accepts changes again by itself — no restart.

mod common;

use std::time::Duration;

use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use common::{eventually, start_in};
use coalmine_queue::Durability;

/// An SDK client that does not retry, so that each refusal is seen.
fn no_retry_client(url: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDRECOVERY0001", "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .endpoint_url(url)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

#[tokio::test]
async fn a_failed_write_is_refused_forgotten_and_recovered_from() {
    let s = start_in(tempfile::tempdir().unwrap(), Durability::Commit).await;
    let c = no_retry_client(&s.url);
    let url = c
        .create_queue()
        .queue_name("disk")
        .attributes(QueueAttributeName::VisibilityTimeout, "600")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    c.send_message().queue_url(&url).message_body("a").send().await.unwrap();

    // the disk is full for one commit
    s.broker.fail_next_store_commits(1);
    let e = c.send_message().queue_url(&url).message_body("refused").send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500), "{e:?}");

    // the broker reopens the store by itself; until then changes are refused, and kept nowhere
    let mut tries = 0;
    eventually(Duration::from_secs(30), "a send accepted again", || {
        tries += 1;
        let c = c.clone();
        let url = url.clone();
        async move { c.send_message().queue_url(&url).message_body("c").send().await.ok() }
    })
    .await;
    let st = s.broker.queue_stats("disk").unwrap();
    assert_eq!(st.visible, 2, "only what was acknowledged is counted (after {tries} tries)");
    let n = c.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::ApproximateNumberOfMessages).send().await.unwrap();
    assert_eq!(n.attributes().unwrap()[&QueueAttributeName::ApproximateNumberOfMessages], "2");

    // a receive is answered without waiting for its change (who holds the messages): when
    // that change is refused, the messages are visible again once the store recovers, not
    // hidden for 600 s — delivered again, as after a visibility timeout
    s.broker.fail_next_store_commits(1);
    match c.receive_message().queue_url(&url).max_number_of_messages(10).send().await {
        Ok(first) => assert_eq!(first.messages().len(), 2, "{first:?}"),
        // (the store's periodic telemetry write took the failure first: refused at once)
        Err(e) => assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500), "{e:?}"),
    }
    let got = eventually(Duration::from_secs(30), "the messages visible again", || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let r = c.receive_message().queue_url(&url).max_number_of_messages(10).send().await.ok()?;
            let mut v: Vec<(String, String)> =
                r.messages().iter().map(|m| (m.body().unwrap().to_string(), m.receipt_handle().unwrap().to_string())).collect();
            v.sort();
            (!v.is_empty()).then_some(v)
        }
    })
    .await;
    assert_eq!(got.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    settle(&c, &url).await;
    // the consumer's telemetry counts the receive that was committed, not the refused one
    assert_eq!(counts(&s.broker), (2, 0), "(received, deleted)");

    // a delete whose change is refused is not counted either, and the message stays in flight
    let handle = &got[0].1;
    s.broker.fail_next_store_commits(1);
    let e = c.delete_message().queue_url(&url).receipt_handle(handle).send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
    eventually(Duration::from_secs(30), "changes accepted again", || {
        let c = c.clone();
        let url = url.clone();
        async move { c.send_message().queue_url(&url).message_body("e").send().await.ok() }
    })
    .await;
    assert_eq!(counts(&s.broker), (2, 0), "(received, deleted): the refused delete is not counted");
    c.delete_message().queue_url(&url).receipt_handle(handle).send().await.unwrap();
    assert_eq!(s.broker.queue_stats("disk").unwrap().in_flight, 1);
    assert_eq!(counts(&s.broker), (2, 1), "(received, deleted)");

    // and the store holds exactly that across a restart, telemetry included
    let dir = s.stop();
    let s = start_in(dir, Durability::Commit).await;
    let st = s.broker.queue_stats("disk").unwrap();
    assert_eq!((st.visible, st.in_flight), (1, 1), "one received message left, one sent since, and nothing refused");
    assert_eq!(counts(&s.broker), (2, 1));
}

#[tokio::test]
async fn a_delete_retried_at_once_after_a_refusal_is_stored_before_it_is_answered() {
    let s = start_in(tempfile::tempdir().unwrap(), Durability::Commit).await;
    let c = no_retry_client(&s.url);
    let url = c.create_queue().queue_name("disk").attributes(QueueAttributeName::VisibilityTimeout, "600").send().await.unwrap().queue_url().unwrap().to_string();
    c.send_message().queue_url(&url).message_body("a").send().await.unwrap();
    let m = c.receive_message().queue_url(&url).send().await.unwrap().messages()[0].clone();
    let handle = m.receipt_handle().unwrap();
    settle(&c, &url).await;
    s.broker.fail_next_store_commits(1);
    let e = c.delete_message().queue_url(&url).receipt_handle(handle).send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
    // An SDK retries at once, before the broker's periodic upkeep: the answer must be the truth.
    let retried = c.delete_message().queue_url(&url).receipt_handle(handle).send().await;
    let dir = s.stop();
    let s = start_in(dir, Durability::Commit).await;
    let st = s.broker.queue_stats("disk").unwrap();
    match retried {
        Ok(_) => assert_eq!((st.visible, st.in_flight), (0, 0), "the retried delete answered 200, so it is stored"),
        Err(e) => {
            assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500), "{e:?}");
            assert_eq!(st.visible + st.in_flight, 1, "refused twice: the message is still there");
        }
    }
}

/// Wait until every change made so far is committed, so that the failure injected next hits
/// the change meant: a receive is answered before its change is committed, a TagQueue after
/// its own, which comes later.
async fn settle(c: &aws_sdk_sqs::Client, url: &str) {
    c.tag_queue().queue_url(url).tags("settled", "yes").send().await.unwrap();
}

/// The recovery client's received and deleted counts in the queue's telemetry.
fn counts(b: &coalmine_queue::Broker) -> (u64, u64) {
    let t = b.telemetry("disk", 0).unwrap();
    let mine: Vec<_> = t.iter().filter(|c| c.access_key_id == "AKIDRECOVERY0001").collect();
    assert!(t.len() == mine.len(), "only the test's client consumed: {t:?}");
    let received = mine.iter().flat_map(|c| &c.buckets).map(|b| b.received).sum();
    let deleted = mine.iter().flat_map(|c| &c.buckets).map(|b| b.deleted).sum();
    (received, deleted)
}
