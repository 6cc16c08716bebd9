//! Typed AWS JSON 1.0 requests for the busiest actions (SendMessage, SendMessageBatch,
//! ReceiveMessage, DeleteMessage, DeleteMessageBatch): read straight from the body, without a
//! `serde_json::Value` in between. A body these shapes do not take as they are (a parameter of
//! another type, a duplicate key, anything unusual) is not refused here: it goes the general
//! way (a `Value`), which gives the error SQS gives, so the answers are the same either way.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendEntry<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message_body: Option<Cow<'a, str>>,
    #[serde(default)]
    pub delay_seconds: Option<i64>,
    #[serde(default)]
    pub message_attributes: Option<Map<String, Value>>,
    #[serde(default)]
    pub message_system_attributes: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    pub message_group_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message_deduplication_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SendBatch<'a> {
    #[serde(borrow, default)]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub entries: Option<Vec<SendEntry<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteEntry<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub receipt_handle: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteBatch<'a> {
    #[serde(borrow, default)]
    pub queue_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub entries: Option<Vec<DeleteEntry<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Receive<'a> {
    #[serde(borrow, default)]
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
    #[serde(borrow, default)]
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
