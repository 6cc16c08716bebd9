//! What the proxy reads of SQS's two wire protocols: the action and the receipt handles of a
//! request, the messages and batch results of a response. AWS JSON 1.0 (`X-Amz-Target:
//! AmazonSQS.<Action>`, JSON bodies) and the query protocol (form-encoded requests, XML
//! responses). Everything else passes through unread.

use std::borrow::Cow;

use serde::Deserialize;

/// The wire protocol of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// The actions whose outcome the proxy records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Receive,
    Delete,
    DeleteBatch,
    ChangeVisibility,
    ChangeVisibilityBatch,
    Other,
}

impl Action {
    pub fn from_name(name: &str) -> Action {
        match name {
            "ReceiveMessage" => Action::Receive,
            "DeleteMessage" => Action::Delete,
            "DeleteMessageBatch" => Action::DeleteBatch,
            "ChangeMessageVisibility" => Action::ChangeVisibility,
            "ChangeMessageVisibilityBatch" => Action::ChangeVisibilityBatch,
            _ => Action::Other,
        }
    }
}

/// One receipt handle named by a request (a batch has several, each with its entry id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub receipt: String,
    pub visibility_timeout: Option<i64>,
}

/// What the proxy needs of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub protocol: Protocol,
    pub action: Action,
    pub queue_url: Option<String>,
    /// ReceiveMessage's `VisibilityTimeout`.
    pub visibility_timeout: Option<i64>,
    pub entries: Vec<Entry>,
}

/// A message a ReceiveMessage response handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    /// `ApproximateReceiveCount`, when the consumer asked for it.
    pub receive_count: Option<u32>,
}

/// Entry ids a batch response reports as done and as failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub successful: Vec<String>,
    pub failed: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonRequest<'a> {
    #[serde(borrow, default)]
    queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    receipt_handle: Option<Cow<'a, str>>,
    #[serde(default)]
    visibility_timeout: Option<i64>,
    #[serde(borrow, default)]
    entries: Vec<JsonEntry<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonEntry<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    receipt_handle: Cow<'a, str>,
    #[serde(default)]
    visibility_timeout: Option<i64>,
}

/// Read a request: the protocol from `X-Amz-Target` (JSON) or its absence (query, with the
/// parameters in the form body and/or the URL's query string). `None` when the request does not
/// parse: it is forwarded all the same, and the upstream answers it.
pub fn parse_request(target: Option<&str>, uri_query: Option<&str>, body: &[u8]) -> Option<Request> {
    match target {
        Some(t) => {
            let action = Action::from_name(t.strip_prefix("AmazonSQS.")?);
            if action == Action::Other {
                return Some(Request { protocol: Protocol::Json, action, queue_url: None, visibility_timeout: None, entries: Vec::new() });
            }
            let req: JsonRequest = serde_json::from_slice(body).ok()?;
            let mut entries: Vec<Entry> = req
                .entries
                .into_iter()
                .map(|e| Entry { id: e.id.into_owned(), receipt: e.receipt_handle.into_owned(), visibility_timeout: e.visibility_timeout })
                .collect();
            if let Some(r) = req.receipt_handle {
                entries.push(Entry { id: String::new(), receipt: r.into_owned(), visibility_timeout: req.visibility_timeout });
            }
            Some(Request {
                protocol: Protocol::Json,
                action,
                queue_url: req.queue_url.map(Cow::into_owned),
                visibility_timeout: if action == Action::Receive { req.visibility_timeout } else { None },
                entries,
            })
        }
        None => parse_query(uri_query, body),
    }
}

fn parse_query(uri_query: Option<&str>, body: &[u8]) -> Option<Request> {
    let pairs = form_urlencoded::parse(body).chain(form_urlencoded::parse(uri_query.unwrap_or("").as_bytes()));
    let mut action = None;
    let mut queue_url = None;
    let mut receipt = None;
    let mut visibility = None;
    // (index, id, receipt, visibility) of `...BatchRequestEntry.N.Field`.
    let mut batch: Vec<(u32, Entry)> = Vec::new();
    for (k, v) in pairs {
        match &*k {
            "Action" => action = Some(Action::from_name(&v)),
            "QueueUrl" => queue_url = Some(v.into_owned()),
            "ReceiptHandle" => receipt = Some(v.into_owned()),
            "VisibilityTimeout" => visibility = v.parse().ok(),
            key => {
                let Some(rest) = key
                    .strip_prefix("DeleteMessageBatchRequestEntry.")
                    .or_else(|| key.strip_prefix("ChangeMessageVisibilityBatchRequestEntry."))
                else {
                    continue;
                };
                let Some((n, field)) = rest.split_once('.') else { continue };
                let Ok(n) = n.parse::<u32>() else { continue };
                let i = match batch.iter().position(|(m, _)| *m == n) {
                    Some(i) => i,
                    None => {
                        batch.push((n, Entry { id: String::new(), receipt: String::new(), visibility_timeout: None }));
                        batch.len() - 1
                    }
                };
                let e = &mut batch[i].1;
                match field {
                    "Id" => e.id = v.into_owned(),
                    "ReceiptHandle" => e.receipt = v.into_owned(),
                    "VisibilityTimeout" => e.visibility_timeout = v.parse().ok(),
                    _ => {}
                }
            }
        }
    }
    let action = action?;
    batch.sort_by_key(|(n, _)| *n);
    let mut entries: Vec<Entry> = batch.into_iter().map(|(_, e)| e).collect();
    if let Some(r) = receipt {
        entries.push(Entry { id: String::new(), receipt: r, visibility_timeout: visibility });
    }
    Some(Request {
        protocol: Protocol::Query,
        action,
        queue_url,
        visibility_timeout: if action == Action::Receive { visibility } else { None },
        entries,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonReceive<'a> {
    #[serde(borrow, default)]
    messages: Vec<JsonMessage<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonMessage<'a> {
    #[serde(borrow, default)]
    message_id: Cow<'a, str>,
    #[serde(borrow, default)]
    receipt_handle: Cow<'a, str>,
    #[serde(borrow, default)]
    attributes: Option<JsonAttributes<'a>>,
}

#[derive(Deserialize)]
struct JsonAttributes<'a> {
    #[serde(rename = "ApproximateReceiveCount", borrow, default)]
    receive_count: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonBatch<'a> {
    #[serde(borrow, default)]
    successful: Vec<JsonId<'a>>,
    #[serde(borrow, default)]
    failed: Vec<JsonId<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonId<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
}

/// The messages of a successful ReceiveMessage response.
pub fn parse_received(protocol: Protocol, body: &[u8]) -> Option<Vec<Received>> {
    match protocol {
        Protocol::Json => {
            let r: JsonReceive = serde_json::from_slice(body).ok()?;
            Some(
                r.messages
                    .into_iter()
                    .map(|m| Received {
                        message_id: m.message_id.into_owned(),
                        receipt: m.receipt_handle.into_owned(),
                        receive_count: m.attributes.and_then(|a| a.receive_count).and_then(|c| c.parse().ok()),
                    })
                    .collect(),
            )
        }
        Protocol::Query => parse_received_xml(std::str::from_utf8(body).ok()?),
    }
}

/// The entry ids of a successful batch response (DeleteMessageBatch, ChangeMessageVisibilityBatch).
pub fn parse_batch(protocol: Protocol, body: &[u8]) -> Option<BatchResult> {
    match protocol {
        Protocol::Json => {
            let r: JsonBatch = serde_json::from_slice(body).ok()?;
            Some(BatchResult {
                successful: r.successful.into_iter().map(|i| i.id.into_owned()).collect(),
                failed: r.failed.into_iter().map(|i| i.id.into_owned()).collect(),
            })
        }
        Protocol::Query => parse_batch_xml(std::str::from_utf8(body).ok()?),
    }
}

/// XML text with its five predefined entities and character references resolved.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let ent = &rest[1..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if ent.starts_with("#x") => u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32),
            _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Walk an XML document, calling `f(path, text)` for every text node with the names of its
/// enclosing elements (local names, outermost first).
fn walk_xml(doc: &str, mut f: impl FnMut(&[&str], &str)) -> Option<()> {
    let mut path: Vec<&str> = Vec::with_capacity(8);
    for token in xmlparser::Tokenizer::from(doc) {
        match token.ok()? {
            xmlparser::Token::ElementStart { local, .. } => path.push(local.as_str()),
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Close(..) | xmlparser::ElementEnd::Empty => {
                    path.pop();
                }
            },
            xmlparser::Token::Text { text } => f(&path, text.as_str()),
            xmlparser::Token::Cdata { text, .. } => f(&path, text.as_str()),
            _ => {}
        }
    }
    Some(())
}

fn parse_received_xml(doc: &str) -> Option<Vec<Received>> {
    let mut out: Vec<Received> = Vec::new();
    let mut attr_name = String::new();
    walk_xml(doc, |path, text| {
        let Some(pos) = path.iter().position(|n| *n == "Message") else { return };
        // SQS writes MessageId first in each <Message>; it starts a new record.
        let field = &path[pos + 1..];
        let text = unescape(text);
        match field {
            ["MessageId"] => out.push(Received { message_id: text.into_owned(), receipt: String::new(), receive_count: None }),
            ["ReceiptHandle"] => {
                if let Some(m) = out.last_mut() {
                    m.receipt.push_str(&text);
                }
            }
            ["Attribute", "Name"] => attr_name = text.into_owned(),
            ["Attribute", "Value"] if attr_name == "ApproximateReceiveCount" => {
                if let Some(m) = out.last_mut() {
                    m.receive_count = text.trim().parse().ok();
                }
            }
            _ => {}
        }
    })?;
    out.retain(|m| !m.receipt.is_empty());
    Some(out)
}

fn parse_batch_xml(doc: &str) -> Option<BatchResult> {
    let mut r = BatchResult::default();
    walk_xml(doc, |path, text| {
        if path.len() < 2 || path[path.len() - 1] != "Id" {
            return;
        }
        let text = unescape(text).into_owned();
        match path[path.len() - 2] {
            "DeleteMessageBatchResultEntry" | "ChangeMessageVisibilityBatchResultEntry" => r.successful.push(text),
            "BatchResultErrorEntry" => r.failed.push(text),
            _ => {}
        }
    })?;
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_requests() {
        let r = parse_request(Some("AmazonSQS.DeleteMessage"), None, br#"{"QueueUrl":"http://q/1/a","ReceiptHandle":"rh1"}"#).unwrap();
        assert_eq!(r.action, Action::Delete);
        assert_eq!(r.queue_url.as_deref(), Some("http://q/1/a"));
        assert_eq!(r.entries, vec![Entry { id: String::new(), receipt: "rh1".into(), visibility_timeout: None }]);
        let r = parse_request(
            Some("AmazonSQS.ChangeMessageVisibilityBatch"),
            None,
            br#"{"QueueUrl":"u","Entries":[{"Id":"a","ReceiptHandle":"r\/1","VisibilityTimeout":0},{"Id":"b","ReceiptHandle":"r2","VisibilityTimeout":30}]}"#,
        )
        .unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].receipt, "r/1");
        assert_eq!(r.entries[1].visibility_timeout, Some(30));
        let r = parse_request(Some("AmazonSQS.ReceiveMessage"), None, br#"{"QueueUrl":"u","VisibilityTimeout":7,"MaxNumberOfMessages":10}"#).unwrap();
        assert_eq!((r.action, r.visibility_timeout), (Action::Receive, Some(7)));
        let r = parse_request(Some("AmazonSQS.SendMessage"), None, b"not even json").unwrap();
        assert_eq!(r.action, Action::Other);
    }

    #[test]
    fn query_requests() {
        let body = b"Action=DeleteMessageBatch&QueueUrl=http%3A%2F%2Fq%2F1%2Fa&DeleteMessageBatchRequestEntry.2.Id=b&DeleteMessageBatchRequestEntry.1.ReceiptHandle=r%2B1&DeleteMessageBatchRequestEntry.1.Id=a&DeleteMessageBatchRequestEntry.2.ReceiptHandle=r2&Version=2012-11-05";
        let r = parse_request(None, None, body).unwrap();
        assert_eq!(r.protocol, Protocol::Query);
        assert_eq!(r.action, Action::DeleteBatch);
        assert_eq!(r.queue_url.as_deref(), Some("http://q/1/a"));
        assert_eq!(r.entries.iter().map(|e| (e.id.as_str(), e.receipt.as_str())).collect::<Vec<_>>(), vec![("a", "r+1"), ("b", "r2")]);
        let r = parse_request(None, Some("Action=ChangeMessageVisibility&ReceiptHandle=x&VisibilityTimeout=0"), b"").unwrap();
        assert_eq!(r.entries[0].visibility_timeout, Some(0));
        assert!(parse_request(None, None, b"QueueUrl=x").is_none());
    }

    #[test]
    fn json_receive_and_batch() {
        let body = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"rh1","MD5OfBody":"x","Body":"{\"a\":1}","Attributes":{"ApproximateReceiveCount":"3","SentTimestamp":"1"}},{"MessageId":"m2","ReceiptHandle":"rh2","Body":"b"}]}"#;
        let m = parse_received(Protocol::Json, body).unwrap();
        assert_eq!(m[0], Received { message_id: "m1".into(), receipt: "rh1".into(), receive_count: Some(3) });
        assert_eq!(m[1].receive_count, None);
        assert!(parse_received(Protocol::Json, b"{}").unwrap().is_empty());
        let b = parse_batch(Protocol::Json, br#"{"Successful":[{"Id":"a"}],"Failed":[{"Id":"b","Code":"ReceiptHandleIsInvalid","SenderFault":true}]}"#).unwrap();
        assert_eq!(b, BatchResult { successful: vec!["a".into()], failed: vec!["b".into()] });
    }

    #[test]
    fn xml_receive_and_batch() {
        let doc = r#"<?xml version="1.0"?><ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult><Message><MessageId>5fea7756-0ea4-451a-a703-a558b933e274</MessageId><ReceiptHandle>MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw&amp;Lj1FjgXUv1uSj1gUPAWV66FU/WeR4mq2OKpEGYWbnLmpRCJVAyeMjeU5ZBdtcQ+QEauMZc8ZRv37sIW2iJKq3M9MFx1YvV11A2x/KSbkJ0=</ReceiptHandle><MD5OfBody>fafb00f5732ab283681e124bf8747ed1</MD5OfBody><Body>This is a test &lt;message&gt;</Body><Attribute><Name>SenderId</Name><Value>195004372649</Value></Attribute><Attribute><Name>ApproximateReceiveCount</Name><Value>5</Value></Attribute></Message><Message><MessageId>m2</MessageId><ReceiptHandle>r2</ReceiptHandle><Body/></Message></ReceiveMessageResult><ResponseMetadata><RequestId>b6633655-283d-45b4-aee4-4e84e0ae6afa</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
        let m = parse_received(Protocol::Query, doc.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].message_id, "5fea7756-0ea4-451a-a703-a558b933e274");
        assert!(m[0].receipt.contains("Cw&Lj1"), "{}", m[0].receipt);
        assert_eq!(m[0].receive_count, Some(5));
        assert_eq!((m[1].message_id.as_str(), m[1].receipt.as_str(), m[1].receive_count), ("m2", "r2", None));
        let doc = r#"<DeleteMessageBatchResponse><DeleteMessageBatchResult><DeleteMessageBatchResultEntry><Id>msg1</Id></DeleteMessageBatchResultEntry><BatchResultErrorEntry><Id>msg2</Id><Code>ReceiptHandleIsInvalid</Code><SenderFault>true</SenderFault></BatchResultErrorEntry></DeleteMessageBatchResult></DeleteMessageBatchResponse>"#;
        let b = parse_batch(Protocol::Query, doc.as_bytes()).unwrap();
        assert_eq!(b, BatchResult { successful: vec!["msg1".into()], failed: vec!["msg2".into()] });
    }
}
