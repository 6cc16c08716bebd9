//! Hostile clients: requests built to crash the broker, exhaust its memory, its connections or
//! its file descriptors. After each, the broker must still answer an official SDK client.

mod common;

use std::time::{Duration, Instant};

use common::{client, code, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A SigV4 Authorization header as an SDK sends it (the broker reads the access key id from it;
/// it checks the signature only with `--verify-signatures`).
fn auth(akid: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential={akid}/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature=00")
}

/// Read from `s` until the peer closes or `deadline` passes; returns what arrived and whether
/// the connection was closed.
async fn read_until_closed(s: &mut TcpStream, deadline: Duration) -> (String, bool) {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// Read one HTTP response head (status line and headers) within `deadline`.
async fn read_head(s: &mut TcpStream, deadline: Duration) -> String {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no response head within {deadline:?} ({other:?}); got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// The broker still serves: an official SDK client creates a queue and sends to it.
async fn still_serves(url: &str) {
    let c = client(url, "AKIDSTILLALIVE00");
    let q = c.create_queue().queue_name("alive").send().await.expect("the broker still answers").queue_url().unwrap().to_string();
    c.send_message().queue_url(&q).message_body("still here").send().await.expect("and still accepts messages");
}

fn fast_limits(c: &mut coalmine_queue::BrokerConfig) {
    c.durability = coalmine_queue::Durability::None;
    c.limits.header_timeout = Duration::from_secs(1);
    c.limits.body_timeout = Duration::from_secs(1);
}

#[tokio::test]
async fn deeply_dotted_parameter_names_are_refused_by_name() {
    let s = start_with(tempfile::tempdir().unwrap(), fast_limits).await;
    // ~34 KB of dots in a GET URL: once enough to overflow the stack.
    let key = format!("Attribute{}", ".1".repeat(17_000));
    let r = reqwest::Client::new()
        .get(format!("{}/?Action=ListQueues&{key}=x", s.url))
        .header("authorization", auth("AKIDHOSTILE00001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("<Code>InvalidParameterValue</Code>"), "{text}");
    assert!(text.contains("The parameter Attribute.1.1.1"), "the error names the parameter: {text}");
    assert!(text.contains("at most 8 parts"), "{text}");
    // the same in a POST body, far deeper
    let body = format!("Action=SendMessage&MessageBody=x&{}=y", "a.".repeat(200_000));
    let r = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", auth("AKIDHOSTILE00001"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // a legitimately deep name (7 parts) still works
    let c = client(&s.url, "AKIDHOSTILE00001");
    let q = c.create_queue().queue_name("deep").send().await.unwrap().queue_url().unwrap().to_string();
    let r = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", auth("AKIDHOSTILE00001"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "Action=SendMessageBatch&QueueUrl={}&SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=b\
             &SendMessageBatchRequestEntry.1.MessageAttribute.1.Name=n&SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType=String\
             &SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue=v",
            q
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    still_serves(&s.url).await;
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused_early() {
    let s = start_with(tempfile::tempdir().unwrap(), fast_limits).await;
    // headers beyond the limit: 431 from the HTTP layer
    let r = reqwest::Client::new()
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("authorization", auth("AKIDHOSTILE00002"))
        .header("x-padding", "p".repeat(100 * 1024))
        .body("{}")
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // a declared 1 GiB body: 413 at once, without waiting for the body
    let mut t = TcpStream::connect(addr(&s.url)).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\nx-amz-target: AmazonSQS.SendMessage\r\nauthorization: {}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 1073741824\r\n\r\n",
        addr(&s.url),
        auth("AKIDHOSTILE00002")
    );
    t.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut t, Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    // a body over the limit that declares no length (chunked): 413 too
    let r = reqwest::Client::new()
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("authorization", auth("AKIDHOSTILE00002"))
        .body(reqwest::Body::wrap_stream(futures_stream(6 * 1024 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    still_serves(&s.url).await;
}

/// A body of `n` spaces in 64 KiB chunks, without a Content-Length.
fn futures_stream(n: usize) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter((0..n.div_ceil(65536)).map(|_| Ok(vec![b' '; 65536])))
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let s = start_with(tempfile::tempdir().unwrap(), fast_limits).await;
    // idle: connects and sends nothing
    let mut idle = TcpStream::connect(addr(&s.url)).await.unwrap();
    // slowloris: half a request line, then nothing
    let mut slow = TcpStream::connect(addr(&s.url)).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nx-amz-tar").await.unwrap();
    // a body that stops halfway
    let mut half = TcpStream::connect(addr(&s.url)).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: AmazonSQS.ListQueues\r\nauthorization: {}\r\ncontent-length: 100\r\n\r\n{{\"Queue",
        auth("AKIDHOSTILE00003")
    );
    half.write_all(head.as_bytes()).await.unwrap();
    // 1 s timeouts; generous deadlines for a loaded machine
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(20)).await;
    assert!(closed, "an idle connection is closed after the header timeout");
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(20)).await;
    assert!(closed, "a connection trickling its headers is closed");
    let (text, closed) = read_until_closed(&mut half, Duration::from_secs(20)).await;
    assert!(closed, "a connection trickling its body is closed");
    assert!(text.contains("RequestTimeout"), "and told why: {text}");
    still_serves(&s.url).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_idle_ones_make_room() {
    let s = start_with(tempfile::tempdir().unwrap(), |c| {
        fast_limits(c);
        c.limits.max_connections = 4;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&s.url)).await.unwrap());
    }
    // every slot is taken by a silent client; the SDK's request is served once the header
    // timeout has closed them
    still_serves(&s.url).await;
    for mut h in held {
        let (_, closed) = read_until_closed(&mut h, Duration::from_secs(20)).await;
        assert!(closed);
    }
}

#[tokio::test]
async fn many_idle_sockets_do_not_exhaust_file_descriptors() {
    // A soft limit as low as many systems' default; serving raises it to the hard limit.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain rlimit syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    // 1,100 idle sockets (2,200 descriptors here, both ends) against a soft limit of 1,024, or
    // proportionally less where the hard limit is lower
    let low_soft = lim.rlim_max.min(1024);
    let sockets = if lim.rlim_max >= 4096 { 1100 } else { (lim.rlim_max / 2).saturating_sub(64) as usize };
    unsafe {
        let low = libc::rlimit { rlim_cur: low_soft, rlim_max: lim.rlim_max };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let s = start_with(tempfile::tempdir().unwrap(), |c| {
        c.durability = coalmine_queue::Durability::None;
        c.limits.header_timeout = Duration::from_secs(120);
    })
    .await;
    common::eventually(Duration::from_secs(30), "the soft limit raised", || async {
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) };
        (now.rlim_cur == lim.rlim_max).then_some(())
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..sockets {
        idle.push(TcpStream::connect(addr(&s.url)).await.unwrap());
    }
    still_serves(&s.url).await;
    drop(idle);
}

#[tokio::test]
async fn access_key_ids_are_bounded_and_not_kept() {
    let s = start_with(tempfile::tempdir().unwrap(), fast_limits).await;
    let c = client(&s.url, "AKIDHOSTILE00004");
    let q = c.create_queue().queue_name("keys").send().await.unwrap().queue_url().unwrap().to_string();
    // longer than AWS's 128 characters: refused
    let long = client(&s.url, &"A".repeat(129));
    let e = long.send_message().queue_url(&q).message_body("x").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidClientTokenId");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
    let r = reqwest::Client::new()
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.ListQueues")
        .header("authorization", auth(&"B".repeat(30_000)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // thousands of distinct 128-character ids, each sending, receiving and deleting a message
    let http = reqwest::Client::new();
    let call = |akid: String, action: &'static str, body: serde_json::Value| {
        let http = http.clone();
        let url = s.url.clone();
        async move {
            let r = http
                .post(&url)
                .header("x-amz-target", format!("AmazonSQS.{action}"))
                .header("content-type", "application/x-amz-json-1.0")
                .header("authorization", auth(&akid))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    for i in 0..3000 {
        let akid = format!("{i:0>128}");
        call(akid.clone(), "SendMessage", serde_json::json!({"QueueUrl": q, "MessageBody": "m"})).await;
        let r = call(akid.clone(), "ReceiveMessage", serde_json::json!({"QueueUrl": q})).await;
        let h = r["Messages"][0]["ReceiptHandle"].as_str().expect("a message").to_string();
        call(akid, "DeleteMessage", serde_json::json!({"QueueUrl": q, "ReceiptHandle": h})).await;
    }
    // telemetry keeps per-second series of at most 1,024 consumers per queue (the rest are
    // counted together), and the table of ids keeps those plus at most as many unused ones
    let consumers = s.broker.telemetry("keys", 0).unwrap();
    assert!(consumers.len() <= 1025, "{} telemetry series", consumers.len());
    assert!(consumers.iter().any(|c| c.access_key_id == coalmine_queue::telemetry::OTHER_CONSUMERS));
    let n = coalmine_queue::interned_access_keys();
    assert!(n <= 2 * 1025 + 64, "{n} access key ids interned after 3,000 distinct ones came and went");
    still_serves(&s.url).await;
}

#[tokio::test]
async fn made_up_action_names_do_not_grow_the_metrics() {
    let s = start_with(tempfile::tempdir().unwrap(), fast_limits).await;
    let http = reqwest::Client::new();
    for i in 0..2000 {
        let r = http
            .post(&s.url)
            .header("x-amz-target", format!("AmazonSQS.Made{i}Up"))
            .header("authorization", auth("AKIDHOSTILE00005"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    let m = http.get(format!("{}/_coalmine/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    let series = m.lines().filter(|l| l.starts_with("coalmine_queue_requests_total{")).count();
    assert!(series < 10, "{series} request series:\n{m}");
    assert!(m.contains("coalmine_queue_requests_total{action=\"invalid\",outcome=\"UnknownOperationException\"} 2000"), "{m}");
    still_serves(&s.url).await;
}
