//! Typed AWS JSON 1.0 requests for the busiest actions (SendMessage, SendMessageBatch,
//! ReceiveMessage, DeleteMessage, DeleteMessageBatch): read straight from the body, without a
//! `serde_json::Value` in between. A body these shapes do not take as they are (a parameter of
//! another type, a duplicate key, anything unusual) is not refused here: it goes the general
//! way (a `Value`), which gives the error SQS gives, so the answers are the same either way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

/// An optional string that borrows from the body where it has no escapes (serde's `borrow`
/// alone does not reach through an `Option`: every string would be copied).
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendEntry<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub message_body: Option<Cow<'a, str>>,
    #[serde(default)]
    pub delay_seconds: Option<i64>,
    #[serde(default)]
    pub message_attributes: Option<Map<String, Value>>,
    #[serde(default)]
    pub message_system_attributes: Option<Map<String, Value>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub message_group_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub message_deduplication_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendBatch<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub entries: Option<Vec<SendEntry<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteEntry<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub receipt_handle: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteBatch<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub entries: Option<Vec<DeleteEntry<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Receive<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(default)]
    pub max_number_of_messages: Option<i64>,
    #[serde(default)]
    pub visibility_timeout: Option<i64>,
    #[serde(default)]
    pub wait_time_seconds: Option<i64>,
    #[serde(borrow, default)]
    pub attribute_names: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub message_system_attribute_names: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub message_attribute_names: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub receive_request_attempt_id: Option<Cow<'a, str>>,
}

/// A hot action's request, read typed.
pub(crate) enum Fast<'a> {
    Send(SendEntry<'a>),
    SendBatch(SendBatch<'a>),
    Receive(Receive<'a>),
    Delete(DeleteEntry<'a>),
    DeleteBatch(DeleteBatch<'a>),
}

/// The typed form of `body` when `action` is one of the busiest and the body is a JSON object
/// of the usual shape; `None` sends the request the general way.
pub(crate) fn parse<'a>(action: &str, body: &'a [u8]) -> Option<Fast<'a>> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    match action {
        "SendMessage" => serde_json::from_slice(body).ok().map(Fast::Send),
        "SendMessageBatch" => serde_json::from_slice(body).ok().map(Fast::SendBatch),
        "ReceiveMessage" => serde_json::from_slice(body).ok().map(Fast::Receive),
        "DeleteMessage" => serde_json::from_slice(body).ok().map(Fast::Delete),
        "DeleteMessageBatch" => serde_json::from_slice(body).ok().map(Fast::DeleteBatch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_from_the_body_unless_escaped() {
        let body = br#"{"QueueUrl":"http://q/1/a","Entries":[{"Id":"e1","MessageBody":"plain"},{"Id":"e2","MessageBody":"line\nbreak"}]}"#;
        let Some(Fast::SendBatch(b)) = parse("SendMessageBatch", body) else { panic!("not read typed") };
        assert!(matches!(b.queue_url, Some(Cow::Borrowed("http://q/1/a"))));
        let e = b.entries.unwrap();
        assert!(matches!(e[0].message_body, Some(Cow::Borrowed("plain"))));
        assert!(matches!(&e[1].message_body, Some(Cow::Owned(s)) if s == "line\nbreak"));
        assert!(e[0].message_group_id.is_none());
        let Some(Fast::Delete(d)) = parse("DeleteMessage", br#"{"QueueUrl":"u","ReceiptHandle":"h"}"#) else { panic!() };
        assert!(matches!(d.receipt_handle, Some(Cow::Borrowed("h"))));
        // a null is an absent parameter, as before
        let Some(Fast::Delete(d)) = parse("DeleteMessage", br#"{"QueueUrl":null,"ReceiptHandle":"h"}"#) else { panic!() };
        assert!(d.queue_url.is_none());
    }
}
