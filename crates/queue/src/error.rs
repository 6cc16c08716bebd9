//! SQS errors: one type for every protocol, rendered by each in its own shape.

/// An error as SQS reports it.
///
/// `code` is the modern (JSON protocol) error code, e.g. `QueueDoesNotExist`; `query_code` is
/// the code the query protocol (XML) uses and the JSON protocol sends in the
/// `x-amzn-query-error` header, e.g. `AWS.SimpleQueueService.NonExistentQueue`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SqsError {
    pub code: &'static str,
    pub query_code: &'static str,
    /// HTTP status, 400 for client faults.
    pub status: u16,
    /// `Sender` (client fault) or `Receiver` (server fault).
    pub sender_fault: bool,
    pub message: String,
}

impl SqsError {
    /// A client error whose query code is the same as its code.
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        SqsError { code, query_code: code, status: 400, sender_fault: true, message: message.into() }
    }

    /// A client error with a distinct legacy (query protocol) code.
    pub fn client_legacy(code: &'static str, query_code: &'static str, message: impl Into<String>) -> Self {
        SqsError { code, query_code, status: 400, sender_fault: true, message: message.into() }
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterValue", message)
    }

    pub fn missing_parameter(name: &str) -> Self {
        Self::client("MissingParameter", format!("The request must contain the parameter {name}."))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        SqsError { code: "InternalFailure", query_code: "InternalFailure", status: 500, sender_fault: false, message: message.into() }
    }
}
