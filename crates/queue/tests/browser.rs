//! What a web page can make a browser send — unsigned requests, cross-origin form posts, image
//! loads — is refused, so that no page a developer visits can create, fill or delete queues.

mod common;

use coalmine_queue::Durability;
use common::{client, start_with, AUTH};

async fn names(url: &str) -> Vec<String> {
    let c = client(url, "AKIDBROWSER00001");
    c.list_queues().send().await.unwrap().queue_urls().to_vec()
}

#[tokio::test]
async fn unsigned_requests_get_missing_authentication_token() {
    let s = start_with(tempfile::tempdir().unwrap(), |c| c.durability = Durability::None).await;
    let http = reqwest::Client::new();
    // JSON protocol
    let r = http
        .post(&s.url)
        .header("x-amz-target", "AmazonSQS.CreateQueue")
        .header("content-type", "application/x-amz-json-1.0")
        .body(r#"{"QueueName":"j"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-amzn-query-error"], "MissingAuthenticationToken;Sender");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["__type"], "com.amazonaws.sqs#MissingAuthenticationToken");
    // query protocol, POST and GET (an <img src> or a plain link)
    let r = http.post(&s.url).header("content-type", "application/x-www-form-urlencoded").body("Action=CreateQueue&QueueName=q").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<Code>MissingAuthenticationToken</Code>"));
    let r = http.get(format!("{}/?Action=CreateQueue&QueueName=g", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // an Authorization header of another scheme is not a signature either
    let r = http.get(format!("{}/?Action=CreateQueue&QueueName=b", s.url)).header("authorization", "Basic Zm9vOmJhcg==").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(names(&s.url).await.is_empty(), "nothing was created");
    // signed (by the SDK, or shaped so): served
    let r = http.get(format!("{}/?Action=CreateQueue&QueueName=ok", s.url)).header("authorization", AUTH).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // presigned in the query string: served
    let r = http
        .get(format!(
            "{}/?Action=ListQueues&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDPRESIGNED000%2F20260101%2Fus-east-1%2Fsqs%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=00",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(names(&s.url).await.len(), 1);
}

#[tokio::test]
async fn requests_from_web_pages_are_refused_unless_their_origin_is_allowed() {
    let s = start_with(tempfile::tempdir().unwrap(), |c| {
        c.durability = Durability::None;
        c.allowed_origins = vec!["http://localhost:3000".into()];
    })
    .await;
    let c = client(&s.url, "AKIDBROWSER00002");
    let url = c.create_queue().queue_name("target").send().await.unwrap().queue_url().unwrap().to_string();
    let http = reqwest::Client::new();
    // a cross-origin form POST, even with something shaped like a signature in it
    for body in [
        format!("Action=SendMessage&QueueUrl={url}&MessageBody=forged"),
        format!("Action=DeleteQueue&QueueUrl={url}"),
    ] {
        let r = http
            .post(&s.url)
            .header("origin", "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", AUTH)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        assert!(text.contains("<Code>AccessDenied</Code>") && text.contains("--allow-origin"), "{text}");
    }
    // a page's image load carries no Origin, but the browser marks it as from another site;
    // a made-up presigned query does not help
    let r = http
        .get(format!(
            "{}/?Action=DeleteQueue&QueueUrl={url}&X-Amz-Credential=AKIDPRESIGNED000%2F20260101%2Fus-east-1%2Fsqs%2Faws4_request&X-Amz-Signature=00",
            s.url
        ))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "no-cors")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let st = s.broker.queue_stats("target").expect("the queue is still there");
    assert_eq!(st.visible, 0, "nothing forged was sent");
    // the allowed origin is served
    let r = http
        .post(&s.url)
        .header("origin", "http://localhost:3000")
        .header("x-amz-target", "AmazonSQS.SendMessage")
        .header("authorization", AUTH)
        .body(serde_json::json!({"QueueUrl": url, "MessageBody": "from the allowed page"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.broker.queue_stats("target").unwrap().visible, 1);
}
