//! The form-encoded query protocol with XML responses (older SDKs).
//!
//! Translates `Action=...&QueueUrl=...&Attribute.1.Name=...` into the JSON protocol's request
//! shape, and a JSON-shaped result into the XML the query protocol returns.

use serde_json::Value;

use crate::error::SqsError;

/// Parse a query-protocol request (form parameters, from the body or the URL) into its action
/// name and the request as the JSON protocol would have sent it.
pub fn parse_request(_params: &[(String, String)]) -> Result<(String, Value), SqsError> {
    Err(SqsError::client("InvalidAction", "the query protocol is not available yet"))
}

/// Render an action's JSON-shaped result as the query protocol's XML response.
pub fn render_response(action: &str, _result: &Value, request_id: &str) -> String {
    format!("<{action}Response><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>")
}

/// Render an error as the query protocol's XML `ErrorResponse`.
pub fn render_error(err: &SqsError, request_id: &str) -> String {
    format!(
        "<ErrorResponse><Error><Type>{}</Type><Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
        if err.sender_fault { "Sender" } else { "Receiver" },
        err.query_code,
        err.message
    )
}
