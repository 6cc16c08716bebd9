//! The official AWS SDK (aws-sdk-sqs) against the broker's HTTP server on a port chosen by
//! the OS.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use common::{client, code, eventually, start};
use md5::{Digest, Md5};

async fn create(c: &aws_sdk_sqs::Client, name: &str, attrs: &[(QueueAttributeName, &str)]) -> String {
    let mut r = c.create_queue().queue_name(name);
    for (k, v) in attrs {
        r = r.attributes(k.clone(), *v);
    }
    r.send().await.unwrap().queue_url().unwrap().to_string()
}

async fn attr(c: &aws_sdk_sqs::Client, url: &str, name: QueueAttributeName) -> String {
    let out = c.get_queue_attributes().queue_url(url).attribute_names(name.clone()).send().await.unwrap();
    out.attributes().and_then(|a| a.get(&name)).cloned().unwrap_or_default()
}

/// MD5 of message attributes, written here independently of the broker's code, following the
/// algorithm in the SQS developer guide.
type AttrSpec<'a> = (&'a str, &'a str, Result<&'a str, &'a [u8]>);

fn expected_attr_md5(attrs: &[AttrSpec]) -> String {
    let mut sorted = attrs.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut buf = Vec::new();
    for (name, ty, v) in sorted {
        for part in [name.as_bytes(), ty.as_bytes()] {
            buf.extend_from_slice(&(part.len() as u32).to_be_bytes());
            buf.extend_from_slice(part);
        }
        let (t, bytes) = match v {
            Ok(s) => (1u8, s.as_bytes()),
            Err(b) => (2u8, b),
        };
        buf.push(t);
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    format!("{:x}", Md5::digest(&buf))
}

#[tokio::test]
async fn queue_lifecycle_listing_attributes_and_tags() {
    let s = start().await;
    let c = client(&s.url, "AKIDADMIN");
    let url = create(&c, "orders", &[(QueueAttributeName::VisibilityTimeout, "45")]).await;
    assert_eq!(url, format!("{}/000000000000/orders", s.url));
    // same attributes: same URL; different: QueueAlreadyExists
    assert_eq!(create(&c, "orders", &[(QueueAttributeName::VisibilityTimeout, "45")]).await, url);
    let e = c.create_queue().queue_name("orders").attributes(QueueAttributeName::VisibilityTimeout, "50").send().await.unwrap_err();
    assert_eq!(code(&e), "QueueAlreadyExists");
    assert!(e.into_service_error().is_queue_name_exists());
    for n in ["orders-2", "other"] {
        create(&c, n, &[]).await;
    }
    assert_eq!(c.get_queue_url().queue_name("other").send().await.unwrap().queue_url(), Some(&*format!("{}/000000000000/other", s.url)));
    let e = c.get_queue_url().queue_name("nope").send().await.unwrap_err();
    assert!(e.into_service_error().is_queue_does_not_exist());

    let all = c.list_queues().send().await.unwrap();
    assert_eq!(all.queue_urls().len(), 3);
    let pre = c.list_queues().queue_name_prefix("orders").send().await.unwrap();
    assert_eq!(pre.queue_urls().len(), 2);
    let page1 = c.list_queues().max_results(2).send().await.unwrap();
    assert_eq!(page1.queue_urls().len(), 2);
    let token = page1.next_token().expect("a next token").to_string();
    let page2 = c.list_queues().max_results(2).next_token(token).send().await.unwrap();
    assert_eq!(page2.queue_urls(), &[format!("{}/000000000000/other", s.url)]);
    assert!(page2.next_token().is_none());

    // attributes
    let out = c.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::All).send().await.unwrap();
    let a = out.attributes().unwrap();
    assert_eq!(a[&QueueAttributeName::VisibilityTimeout], "45");
    assert_eq!(a[&QueueAttributeName::QueueArn], "arn:aws:sqs:us-east-1:000000000000:orders");
    assert_eq!(a[&QueueAttributeName::ApproximateNumberOfMessages], "0");
    assert_eq!(a[&QueueAttributeName::MaximumMessageSize], "1048576");
    c.set_queue_attributes().queue_url(&url).attributes(QueueAttributeName::DelaySeconds, "3").send().await.unwrap();
    assert_eq!(attr(&c, &url, QueueAttributeName::DelaySeconds).await, "3");
    let e = c.set_queue_attributes().queue_url(&url).attributes(QueueAttributeName::VisibilityTimeout, "43201").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidAttributeValue");
    let e = c
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::from("Bogus"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidAttributeName");
    let e = c.create_queue().queue_name("bad name!").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let e = c.create_queue().queue_name("plain.fifo").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");

    // tags
    c.tag_queue().queue_url(&url).tags("team", "pay").tags("env", "dev").send().await.unwrap();
    c.untag_queue().queue_url(&url).tag_keys("env").send().await.unwrap();
    let tags = c.list_queue_tags().queue_url(&url).send().await.unwrap();
    assert_eq!(tags.tags().unwrap().len(), 1);
    assert_eq!(tags.tags().unwrap()["team"], "pay");

    // delete
    c.delete_queue().queue_url(&url).send().await.unwrap();
    let e = c.send_message().queue_url(&url).message_body("x").send().await.unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.NonExistentQueue");
    assert!(e.into_service_error().is_queue_does_not_exist());
}

#[tokio::test]
async fn send_receive_delete_with_attributes_and_digests() {
    let s = start().await;
    let c = client(&s.url, "AKIDPRODUCER");
    let url = create(&c, "jobs", &[]).await;
    let bin: &[u8] = &[0, 1, 2, 250];
    let out = c
        .send_message()
        .queue_url(&url)
        .message_body("hello ✓")
        .message_attributes("color", MessageAttributeValue::builder().data_type("String").string_value("blue").build().unwrap())
        .message_attributes("n", MessageAttributeValue::builder().data_type("Number").string_value("42").build().unwrap())
        .message_attributes("blob", MessageAttributeValue::builder().data_type("Binary").binary_value(Blob::new(bin)).build().unwrap())
        .message_attributes("t", MessageAttributeValue::builder().data_type("String.custom").string_value("x").build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.md5_of_message_body(), Some(&*format!("{:x}", Md5::digest("hello ✓".as_bytes()))));
    let want = expected_attr_md5(&[
        ("color", "String", Ok("blue")),
        ("n", "Number", Ok("42")),
        ("blob", "Binary", Err(bin)),
        ("t", "String.custom", Ok("x")),
    ]);
    assert_eq!(out.md5_of_message_attributes(), Some(want.as_str()));
    let id = out.message_id().unwrap().to_string();

    let rc = client(&s.url, "AKIDCONSUMER");
    let got = rc
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let msgs = got.messages();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.message_id(), Some(id.as_str()));
    assert_eq!(m.body(), Some("hello ✓"));
    assert_eq!(m.md5_of_body(), out.md5_of_message_body());
    assert_eq!(m.md5_of_message_attributes(), Some(want.as_str()));
    let ma = m.message_attributes().unwrap();
    assert_eq!(ma["blob"].binary_value().unwrap().as_ref(), bin);
    assert_eq!(ma["n"].string_value(), Some("42"));
    let sa = m.attributes().unwrap();
    assert_eq!(sa[&MessageSystemAttributeName::ApproximateReceiveCount], "1");
    assert_eq!(sa[&MessageSystemAttributeName::SenderId], "AKIDPRODUCER");
    assert!(sa[&MessageSystemAttributeName::SentTimestamp].parse::<u64>().unwrap() > 1_600_000_000_000);
    assert!(sa.contains_key(&MessageSystemAttributeName::ApproximateFirstReceiveTimestamp));

    // only selected attributes, digest over them
    c.send_message()
        .queue_url(&url)
        .message_body("b")
        .message_attributes("a.x", MessageAttributeValue::builder().data_type("String").string_value("1").build().unwrap())
        .message_attributes("b", MessageAttributeValue::builder().data_type("String").string_value("2").build().unwrap())
        .send()
        .await
        .unwrap();
    let got = rc.receive_message().queue_url(&url).message_attribute_names("a.*").send().await.unwrap();
    let m2 = &got.messages()[0];
    assert_eq!(m2.message_attributes().unwrap().len(), 1);
    assert_eq!(m2.md5_of_message_attributes(), Some(&*expected_attr_md5(&[("a.x", "String", Ok("1"))])));

    // in flight: invisible
    assert!(rc.receive_message().queue_url(&url).send().await.unwrap().messages().is_empty());
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await, "2");
    rc.delete_message().queue_url(&url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
    rc.delete_message().queue_url(&url).receipt_handle(m2.receipt_handle().unwrap()).send().await.unwrap();
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await, "0");
    let e = rc.delete_message().queue_url(&url).receipt_handle("garbage!").send().await.unwrap_err();
    assert_eq!(code(&e), "ReceiptHandleIsInvalid");

    // telemetry by access key id
    let t = s.broker.telemetry("jobs", 0).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].access_key_id, "AKIDCONSUMER");
    let received: u64 = t[0].buckets.iter().map(|b| b.received).sum();
    let deleted: u64 = t[0].buckets.iter().map(|b| b.deleted).sum();
    assert_eq!((received, deleted), (2, 2));
}

#[tokio::test]
async fn visibility_timeout_return_and_expiry() {
    let s = start().await;
    let c = client(&s.url, "AKIDV");
    let url = create(&c, "vis", &[(QueueAttributeName::VisibilityTimeout, "1")]).await;
    c.send_message().queue_url(&url).message_body("m").send().await.unwrap();
    let r1 = c.receive_message().queue_url(&url).send().await.unwrap();
    let h1 = r1.messages()[0].receipt_handle().unwrap().to_string();
    // comes back after the queue's 1 s visibility timeout
    let r2 = c.receive_message().queue_url(&url).wait_time_seconds(5).send().await.unwrap();
    assert_eq!(r2.messages().len(), 1);
    let m = &r2.messages()[0];
    let h2 = m.receipt_handle().unwrap().to_string();
    assert_ne!(h1, h2);
    // stale handle cannot change visibility
    let e = c.change_message_visibility().queue_url(&url).receipt_handle(&h1).visibility_timeout(10).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    // extend, then return it with 0
    c.change_message_visibility().queue_url(&url).receipt_handle(&h2).visibility_timeout(600).send().await.unwrap();
    assert!(c.receive_message().queue_url(&url).send().await.unwrap().messages().is_empty());
    c.change_message_visibility().queue_url(&url).receipt_handle(&h2).visibility_timeout(0).send().await.unwrap();
    let r3 = c
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(600)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap();
    let m3 = &r3.messages()[0];
    assert_eq!(m3.attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount], "3");
    let e = c.change_message_visibility().queue_url(&url).receipt_handle(&h2).visibility_timeout(43_201).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    // batch visibility change: one good, one bad
    let out = c
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(ChangeMessageVisibilityBatchRequestEntry::builder().id("ok").receipt_handle(m3.receipt_handle().unwrap()).visibility_timeout(0).build().unwrap())
        .entries(ChangeMessageVisibilityBatchRequestEntry::builder().id("bad").receipt_handle("zzz").visibility_timeout(0).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful().len(), 1);
    assert_eq!(out.failed()[0].id(), "bad");
    assert_eq!(out.failed()[0].code(), "ReceiptHandleIsInvalid");

    let t = s.broker.telemetry("vis", 0).unwrap();
    let sum = |f: fn(&coalmine_queue::TelemetryBucket) -> u64| t[0].buckets.iter().map(f).sum::<u64>();
    assert_eq!(sum(|b| b.received), 3);
    assert_eq!(sum(|b| b.expired), 1);
    assert_eq!(sum(|b| b.returned), 2);
}

#[tokio::test]
async fn long_poll_answers_as_soon_as_a_message_arrives() {
    let s = start().await;
    let c = client(&s.url, "AKIDLP");
    let url = create(&c, "lp", &[]).await;
    let c2 = c.clone();
    let url2 = url.clone();
    let poll = tokio::spawn(async move { c2.receive_message().queue_url(&url2).wait_time_seconds(20).send().await.unwrap() });
    // wait until the poll is parked in the broker
    eventually(Duration::from_secs(30), "the long poll to wait", || async { (s.long_polls_waiting().await == 1).then_some(()) }).await;
    let sent_at = Instant::now();
    c.send_message().queue_url(&url).message_body("wake").send().await.unwrap();
    let out = poll.await.unwrap();
    let latency = sent_at.elapsed();
    assert_eq!(out.messages().len(), 1);
    // Woken by the send, not by its 20 s wait running out (a loaded machine may take seconds).
    assert!(latency < Duration::from_secs(10), "long poll answered {latency:?} after the send");

    // a long poll with nothing to receive waits its time (1 s) and answers empty
    let t = Instant::now();
    let out = c.receive_message().queue_url(&url).wait_time_seconds(1).send().await.unwrap();
    assert!(out.messages().is_empty());
    assert!(t.elapsed() >= Duration::from_millis(900));
    let e = c.receive_message().queue_url(&url).wait_time_seconds(21).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let e = c.receive_message().queue_url(&url).max_number_of_messages(11).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
}

#[tokio::test]
async fn delays_queue_and_message_level() {
    let s = start().await;
    let c = client(&s.url, "AKIDD");
    let url = create(&c, "delay", &[(QueueAttributeName::DelaySeconds, "1")]).await;
    let t = Instant::now();
    c.send_message().queue_url(&url).message_body("q").send().await.unwrap();
    c.send_message().queue_url(&url).message_body("now").delay_seconds(0).send().await.unwrap();
    let r = c.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
    assert_eq!(r.messages().len(), 1);
    assert_eq!(r.messages()[0].body(), Some("now"));
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessagesDelayed).await, "1");
    let r = c.receive_message().queue_url(&url).wait_time_seconds(5).send().await.unwrap();
    assert_eq!(r.messages()[0].body(), Some("q"));
    assert!(t.elapsed() >= Duration::from_millis(900), "delayed message visible after {:?}", t.elapsed());
    let e = c.send_message().queue_url(&url).message_body("x").delay_seconds(901).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
}

#[tokio::test]
async fn limits_and_errors() {
    let s = start().await;
    let c = client(&s.url, "AKIDL");
    let url = create(&c, "limits", &[(QueueAttributeName::MaximumMessageSize, "1024")]).await;
    let e = c.send_message().queue_url(&url).message_body("x".repeat(1025)).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    c.send_message().queue_url(&url).message_body("x".repeat(1024)).send().await.unwrap();
    let e = c.send_message().queue_url(&url).message_body("bad \u{1} char").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidMessageContents");
    let e = c
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .message_attributes("AWS.no", MessageAttributeValue::builder().data_type("String").string_value("v").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let e = c
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .message_attributes("n", MessageAttributeValue::builder().data_type("Number").string_value("abc").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let e = c.receive_message().queue_url(&url).visibility_timeout(43_201).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    c.purge_queue().queue_url(&url).send().await.unwrap();
    let e = c.purge_queue().queue_url(&url).send().await.unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.PurgeQueueInProgress");
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessages).await, "0");

    // batches
    let url = create(&c, "batches", &[]).await;
    let e = c.send_message_batch().queue_url(&url).send().await.unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.EmptyBatchRequest");
    let mut r = c.send_message_batch().queue_url(&url);
    for i in 0..11 {
        r = r.entries(SendMessageBatchRequestEntry::builder().id(format!("e{i}")).message_body("b").build().unwrap());
    }
    let e = r.send().await.unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.TooManyEntriesInBatchRequest");
    let e = c
        .send_message_batch()
        .queue_url(&url)
        .entries(SendMessageBatchRequestEntry::builder().id("a").message_body("1").build().unwrap())
        .entries(SendMessageBatchRequestEntry::builder().id("a").message_body("2").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.BatchEntryIdsNotDistinct");
    let e = c
        .send_message_batch()
        .queue_url(&url)
        .entries(SendMessageBatchRequestEntry::builder().id("a b").message_body("1").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.InvalidBatchEntryId");
    let e = c
        .send_message_batch()
        .queue_url(&url)
        .entries(SendMessageBatchRequestEntry::builder().id("a").message_body("x".repeat(700_000)).build().unwrap())
        .entries(SendMessageBatchRequestEntry::builder().id("b").message_body("x".repeat(400_000)).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AWS.SimpleQueueService.BatchRequestTooLong");
    let out = c
        .send_message_batch()
        .queue_url(&url)
        .entries(SendMessageBatchRequestEntry::builder().id("good").message_body("1").build().unwrap())
        .entries(SendMessageBatchRequestEntry::builder().id("bad").message_body("\u{0}").build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful().len(), 1);
    assert_eq!(out.successful()[0].id(), "good");
    assert_eq!(out.failed()[0].id(), "bad");
    assert_eq!(out.failed()[0].code(), "InvalidMessageContents");
    assert!(out.failed()[0].sender_fault());
    let got = c.receive_message().queue_url(&url).send().await.unwrap();
    let h = got.messages()[0].receipt_handle().unwrap();
    let out = c
        .delete_message_batch()
        .queue_url(&url)
        .entries(DeleteMessageBatchRequestEntry::builder().id("d1").receipt_handle(h).build().unwrap())
        .entries(DeleteMessageBatchRequestEntry::builder().id("d2").receipt_handle("!!").build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.successful()[0].id(), "d1");
    assert_eq!(out.failed()[0].code(), "ReceiptHandleIsInvalid");
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessagesNotVisible).await, "0");
}

#[tokio::test]
async fn dead_letter_after_max_receives_and_redrive() {
    let s = start().await;
    let c = client(&s.url, "AKIDCANARY");
    let dlq = create(&c, "app-dlq", &[]).await;
    let dlq_arn = attr(&c, &dlq, QueueAttributeName::QueueArn).await;
    let policy = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#);
    let e = c
        .create_queue()
        .queue_name("app")
        .attributes(QueueAttributeName::RedrivePolicy, r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:missing","maxReceiveCount":1}"#)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let src = create(&c, "app", &[(QueueAttributeName::RedrivePolicy, &policy), (QueueAttributeName::VisibilityTimeout, "30")]).await;
    assert!(attr(&c, &src, QueueAttributeName::RedrivePolicy).await.contains("\"maxReceiveCount\":2"));
    let srcs = c.list_dead_letter_source_queues().queue_url(&dlq).send().await.unwrap();
    assert_eq!(srcs.queue_urls(), std::slice::from_ref(&src));

    let sent = c.send_message().queue_url(&src).message_body("poison").send().await.unwrap();
    let id = sent.message_id().unwrap().to_string();
    for _ in 0..2 {
        let r = c.receive_message().queue_url(&src).send().await.unwrap();
        let h = r.messages()[0].receipt_handle().unwrap();
        c.change_message_visibility().queue_url(&src).receipt_handle(h).visibility_timeout(0).send().await.unwrap();
    }
    // the third receive would exceed maxReceiveCount: the message moves to the DLQ
    assert!(c.receive_message().queue_url(&src).send().await.unwrap().messages().is_empty());
    assert_eq!(attr(&c, &dlq, QueueAttributeName::ApproximateNumberOfMessages).await, "1");
    let dl = s.broker.dead_letters("app-dlq").unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].message_id, id);
    assert_eq!(dl[0].source_queue, "app");
    assert_eq!(dl[0].last_receiver.as_deref(), Some("AKIDCANARY"));
    assert_eq!(dl[0].body, "poison");
    let t = s.broker.telemetry("app", 0).unwrap();
    assert_eq!(t[0].buckets.iter().map(|b| b.dead_lettered).sum::<u64>(), 1);

    // redrive through the admin API
    assert_eq!(s.broker.redrive("app-dlq", std::slice::from_ref(&id)).unwrap(), 1);
    assert_eq!(s.broker.queue_stats("app").unwrap().visible, 1);
    assert_eq!(s.broker.queue_stats("app-dlq").unwrap().visible, 0);

    // and through StartMessageMoveTask
    for _ in 0..2 {
        let r = c.receive_message().queue_url(&src).send().await.unwrap();
        let h = r.messages()[0].receipt_handle().unwrap();
        c.change_message_visibility().queue_url(&src).receipt_handle(h).visibility_timeout(0).send().await.unwrap();
    }
    assert!(c.receive_message().queue_url(&src).send().await.unwrap().messages().is_empty());
    let r = c.receive_message().queue_url(&dlq).message_system_attribute_names(MessageSystemAttributeName::All).send().await.unwrap();
    assert_eq!(
        r.messages()[0].attributes().unwrap()[&MessageSystemAttributeName::DeadLetterQueueSourceArn],
        "arn:aws:sqs:us-east-1:000000000000:app"
    );
    c.change_message_visibility().queue_url(&dlq).receipt_handle(r.messages()[0].receipt_handle().unwrap()).visibility_timeout(0).send().await.unwrap();
    let task = c.start_message_move_task().source_arn(&dlq_arn).send().await.unwrap();
    assert!(task.task_handle().is_some());
    eventually(Duration::from_secs(30), "the move task to finish", || {
        let c = c.clone();
        let dlq_arn = dlq_arn.clone();
        async move {
            let l = c.list_message_move_tasks().source_arn(dlq_arn).send().await.unwrap();
            (l.results().first().and_then(|r| r.status()) == Some("COMPLETED")).then_some(())
        }
    })
    .await;
    assert_eq!(s.broker.queue_stats("app").unwrap().visible, 1);
    let e = c.start_message_move_task().source_arn("arn:aws:sqs:us-east-1:000000000000:nope").send().await.unwrap_err();
    assert_eq!(code(&e), "ResourceNotFoundException");
}

#[tokio::test]
async fn fifo_order_groups_and_deduplication() {
    let s = start().await;
    let c = client(&s.url, "AKIDF");
    let url = create(&c, "f.fifo", &[(QueueAttributeName::FifoQueue, "true")]).await;
    let e = c.send_message().queue_url(&url).message_body("x").send().await.unwrap_err();
    assert_eq!(code(&e), "MissingParameter");
    let e = c.send_message().queue_url(&url).message_body("x").message_group_id("g").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    let mut seqs = Vec::new();
    for (g, i) in [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)] {
        let out = c
            .send_message()
            .queue_url(&url)
            .message_body(format!("{g}{i}"))
            .message_group_id(g)
            .message_deduplication_id(format!("{g}{i}"))
            .send()
            .await
            .unwrap();
        seqs.push(out.sequence_number().unwrap().to_string());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // duplicate within 5 minutes: same message id, not enqueued again
    let dup = c.send_message().queue_url(&url).message_body("a1").message_group_id("a").message_deduplication_id("a1").send().await.unwrap();
    assert_eq!(dup.sequence_number(), Some(seqs[0].as_str()));
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessages).await, "5");

    let r = c.receive_message().queue_url(&url).max_number_of_messages(2).message_system_attribute_names(MessageSystemAttributeName::All).send().await.unwrap();
    let bodies: Vec<&str> = r.messages().iter().map(|m| m.body().unwrap()).collect();
    assert_eq!(bodies, ["a1", "b1"]);
    assert_eq!(r.messages()[0].attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId], "a");
    // both groups are locked while their messages are in flight
    assert!(c.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap().messages().is_empty());
    c.delete_message().queue_url(&url).receipt_handle(r.messages()[0].receipt_handle().unwrap()).send().await.unwrap();
    let r2 = c.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
    let bodies: Vec<&str> = r2.messages().iter().map(|m| m.body().unwrap()).collect();
    assert_eq!(bodies, ["a2", "a3"]);
    // return b1: it comes back before b2
    c.change_message_visibility().queue_url(&url).receipt_handle(r.messages()[1].receipt_handle().unwrap()).visibility_timeout(0).send().await.unwrap();
    let r3 = c.receive_message().queue_url(&url).max_number_of_messages(10).send().await.unwrap();
    let bodies: Vec<&str> = r3.messages().iter().map(|m| m.body().unwrap()).collect();
    assert_eq!(bodies, ["b1", "b2"]);

    // content-based deduplication
    let url = create(&c, "cb.fifo", &[(QueueAttributeName::FifoQueue, "true"), (QueueAttributeName::ContentBasedDeduplication, "true")]).await;
    let a = c.send_message().queue_url(&url).message_body("same").message_group_id("g").send().await.unwrap();
    let b = c.send_message().queue_url(&url).message_body("same").message_group_id("g").send().await.unwrap();
    assert_eq!(a.message_id(), b.message_id());
    assert_eq!(attr(&c, &url, QueueAttributeName::ApproximateNumberOfMessages).await, "1");
}

#[tokio::test]
async fn raw_http_errors_and_metrics() {
    let s = start().await;
    let http = reqwest::Client::new();
    // unknown action, JSON protocol
    let r = http
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.Frobnicate")
        .header("authorization", common::AUTH)
        .header("content-type", "application/x-amz-json-1.0")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-amzn-query-error"], "InvalidAction;Sender");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["__type"].as_str().unwrap().ends_with("UnknownOperationException"));
    // malformed JSON body
    let r = http.post(&s.url).header("x-amz-target", "AmazonSQS.ListQueues").header("authorization", common::AUTH).body("{nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // nonexistent queue: the query-compatible header
    let r = http
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.SendMessage")
        .header("authorization", common::AUTH)
        .body(r#"{"QueueUrl":"http://x/000000000000/none","MessageBody":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-amzn-query-error"], "AWS.SimpleQueueService.NonExistentQueue;Sender");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    // oversized request
    let r = http
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("authorization", common::AUTH)
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // still serving; metrics count what happened
    let c = client(&s.url, "AKIDM");
    create(&c, "m", &[]).await;
    let m = http.get(format!("{}/_coalmine/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("coalmine_queue_requests_total{action=\"CreateQueue\",outcome=\"ok\"} 1"), "{m}");
    assert!(m.contains("coalmine_queue_requests_total{action=\"SendMessage\",outcome=\"QueueDoesNotExist\"} 1"), "{m}");
    assert!(m.contains("coalmine_queue_messages{queue=\"m\",state=\"visible\"} 0"), "{m}");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let s = common::start_in(dir, coalmine_queue::Durability::Commit).await;
    let c = client(&s.url, "AKIDR");
    let url = create(&c, "keep", &[(QueueAttributeName::VisibilityTimeout, "1")]).await;
    c.tag_queue().queue_url(&url).tags("k", "v").send().await.unwrap();
    for i in 0..5 {
        c.send_message().queue_url(&url).message_body(format!("m{i}")).send().await.unwrap();
    }
    let r = c.receive_message().queue_url(&url).max_number_of_messages(2).send().await.unwrap();
    assert_eq!(r.messages().len(), 2);
    c.delete_message().queue_url(&url).receipt_handle(r.messages()[0].receipt_handle().unwrap()).send().await.unwrap();
    let dir = s.stop();

    let s2 = common::start_in(dir, coalmine_queue::Durability::Commit).await;
    assert_eq!(s2.dir.as_ref().unwrap().path(), path);
    let c = client(&s2.url, "AKIDR");
    let url = c.get_queue_url().queue_name("keep").send().await.unwrap().queue_url().unwrap().to_string();
    assert_eq!(attr(&c, &url, QueueAttributeName::VisibilityTimeout).await, "1");
    assert_eq!(c.list_queue_tags().queue_url(&url).send().await.unwrap().tags().unwrap()["k"], "v");
    let st = s2.broker.queue_stats("keep").unwrap();
    assert_eq!(st.visible + st.in_flight, 4);
    // the received-but-undeleted message comes back with its receive count (each body's
    // first sighting: with a 1 s visibility a slow machine may see one twice)
    let mut counts = BTreeMap::new();
    while counts.len() < 4 {
        let r = c
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(3)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        assert!(!r.messages().is_empty(), "messages lost after restart: got {counts:?}");
        for m in r.messages() {
            counts
                .entry(m.body().unwrap().to_string())
                .or_insert_with(|| m.attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount].clone());
        }
    }
    assert_eq!(counts.keys().map(String::as_str).collect::<Vec<_>>(), ["m1", "m2", "m3", "m4"]);
    let redelivered = r.messages()[1].body().unwrap();
    assert_eq!(counts[redelivered], "2");
    // telemetry persisted
    let t = s2.broker.telemetry("keep", 0).unwrap();
    assert!(t.iter().any(|c| c.access_key_id == "AKIDR" && c.buckets.iter().map(|b| b.deleted).sum::<u64>() == 1));
}


#[tokio::test]
async fn signatures_are_checked_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let creds_path = dir.path().join("credentials");
    std::fs::write(&creds_path, "[canary]\naws_access_key_id = AKIDGOOD\naws_secret_access_key = right-secret\n").unwrap();
    let creds = coalmine_queue::load_credentials(&creds_path).unwrap();
    let s = common::start_with(dir, |c| c.credentials = Some(creds)).await;
    let good = common::client_with_secret(&s.url, "AKIDGOOD", "right-secret");
    let url = create(&good, "signed", &[]).await;
    good.send_message().queue_url(&url).message_body("x").send().await.unwrap();
    let r = good.receive_message().queue_url(&url).send().await.unwrap();
    assert_eq!(r.messages().len(), 1);
    let bad = common::client_with_secret(&s.url, "AKIDGOOD", "wrong-secret");
    let e = bad.list_queues().send().await.unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    let unknown = common::client_with_secret(&s.url, "AKIDWHO", "right-secret");
    let e = unknown.list_queues().send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidClientTokenId");
    let r = reqwest::Client::new().post(&s.url).header("x-amz-target", "AmazonSQS.ListQueues").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.broker.telemetry("signed", 0).unwrap()[0].access_key_id, "AKIDGOOD");
}

#[tokio::test]
async fn admin_api_in_flight_release_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::start_in(dir, coalmine_queue::Durability::None).await;
    let url = s.broker.ensure_queue("work", &BTreeMap::from([("VisibilityTimeout".to_string(), "300".to_string())])).unwrap();
    assert_eq!(url, format!("{}/000000000000/work", s.url));
    // ensure_queue updates attributes of an existing queue
    s.broker.ensure_queue("work", &BTreeMap::from([("VisibilityTimeout".to_string(), "600".to_string())])).unwrap();
    let producer = client(&s.url, "AKIDP");
    assert_eq!(attr(&producer, &url, QueueAttributeName::VisibilityTimeout).await, "600");
    for i in 0..4 {
        producer.send_message().queue_url(&url).message_body(format!("m{i}")).send().await.unwrap();
    }
    let canary = client(&s.url, "AKIDCANARY");
    let primary = client(&s.url, "AKIDPRIMARY");
    assert_eq!(canary.receive_message().queue_url(&url).max_number_of_messages(1).send().await.unwrap().messages().len(), 1);
    assert_eq!(primary.receive_message().queue_url(&url).max_number_of_messages(2).send().await.unwrap().messages().len(), 2);
    let st = s.broker.queue_stats("work").unwrap();
    assert_eq!((st.visible, st.in_flight, st.delayed), (1, 3, 0));
    let inf = s.broker.in_flight("work").unwrap();
    assert_eq!(inf.iter().filter(|m| m.access_key_id == "AKIDCANARY").count(), 1);
    assert_eq!(inf.iter().filter(|m| m.access_key_id == "AKIDPRIMARY").count(), 2);
    assert!(inf.iter().all(|m| m.receive_count == 1 && m.received_at_ms > 0));
    // roll the canary back: its message is visible again at once
    assert_eq!(s.broker.release_in_flight("work", &["AKIDCANARY".to_string()]).unwrap(), 1);
    let st = s.broker.queue_stats("work").unwrap();
    assert_eq!((st.visible, st.in_flight), (2, 2));
    let t = s.broker.telemetry("work", 0).unwrap();
    let canary_t = t.iter().find(|c| c.access_key_id == "AKIDCANARY").unwrap();
    assert_eq!(canary_t.buckets.iter().map(|b| b.released).sum::<u64>(), 1);
    assert!(s.broker.queue_stats("missing").is_err());
    assert_eq!(s.broker.telemetry("work", u64::MAX).unwrap(), vec![]);
}
