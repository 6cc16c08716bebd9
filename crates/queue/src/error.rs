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

impl SqsError {
    pub fn queue_does_not_exist() -> Self {
        Self::client_legacy(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }

    pub fn receipt_handle_invalid(handle: &str) -> Self {
        Self::client(
            "ReceiptHandleIsInvalid",
            format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
        )
    }

    pub fn message_not_inflight() -> Self {
        Self::client_legacy(
            "MessageNotInflight",
            "AWS.SimpleQueueService.MessageNotInflight",
            "The message referred to is not in flight.",
        )
    }

    pub fn too_many_entries(n: usize) -> Self {
        Self::client_legacy(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are 10. You have sent {n}."),
        )
    }

    pub fn empty_batch() -> Self {
        Self::client_legacy(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.",
        )
    }

    pub fn ids_not_distinct(id: &str) -> Self {
        Self::client_legacy(
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            format!("Id {id} repeated."),
        )
    }

    pub fn invalid_batch_entry_id(id: &str) -> Self {
        Self::client_legacy(
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
            format!(
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long; got \"{id}\"."
            ),
        )
    }

    pub fn batch_too_long(size: usize, max: usize) -> Self {
        Self::client_legacy(
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
            format!("Batch requests cannot be longer than {max} bytes. You have sent {size} bytes."),
        )
    }

    pub fn invalid_attribute_name(name: &str) -> Self {
        Self::client("InvalidAttributeName", format!("Unknown Attribute {name}."))
    }

    pub fn invalid_attribute_value(message: impl Into<String>) -> Self {
        Self::client("InvalidAttributeValue", message)
    }

    /// The SDK models call it `QueueNameExists`; the query protocol `QueueAlreadyExists`.
    pub fn queue_already_exists(name: &str) -> Self {
        Self::client_legacy(
            "QueueNameExists",
            "QueueAlreadyExists",
            format!("A queue already exists with the same name ({name}) and a different value for attribute(s); use SetQueueAttributes to change them."),
        )
    }

    pub fn queue_deleted_recently(name: &str) -> Self {
        Self::client_legacy(
            "QueueDeletedRecently",
            "AWS.SimpleQueueService.QueueDeletedRecently",
            format!("You must wait 60 seconds after deleting a queue before you can create another with the same name ({name})."),
        )
    }

    pub fn over_limit(n: usize) -> Self {
        SqsError {
            code: "OverLimit",
            query_code: "OverLimit",
            status: 403,
            sender_fault: true,
            message: format!("The queue has {n} messages in flight, the most SQS allows; delete messages (or end their visibility) before receiving more."),
        }
    }

    pub fn receipt_handle_expired() -> Self {
        Self::invalid_parameter("Value for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.")
    }

    pub fn access_denied(url: &str) -> Self {
        SqsError {
            code: "AccessDenied",
            query_code: "AccessDenied",
            status: 403,
            sender_fault: true,
            message: format!("Access to the resource {url} is denied: it names another account than this queue's."),
        }
    }

    pub fn purge_in_progress(name: &str) -> Self {
        SqsError {
            code: "PurgeQueueInProgress",
            query_code: "AWS.SimpleQueueService.PurgeQueueInProgress",
            status: 403,
            sender_fault: true,
            message: format!("Only one PurgeQueue operation on {name} is allowed every 60 seconds."),
        }
    }

    pub fn unsupported_operation(action: &str) -> Self {
        Self::client_legacy(
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
            format!("{action} is not a valid SQS action; see the SQS API reference for the list of actions."),
        )
    }

    pub fn invalid_action(action: &str) -> Self {
        Self::client(
            "InvalidAction",
            format!("The action {action} is not valid for this endpoint; see the SQS API reference for the list of actions."),
        )
    }

    pub fn invalid_message_contents(message: impl Into<String>) -> Self {
        Self::client("InvalidMessageContents", message)
    }

    pub fn resource_not_found(message: impl Into<String>) -> Self {
        SqsError { status: 404, ..Self::client("ResourceNotFoundException", message) }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::client("MalformedQueryString", message)
    }

    pub fn request_too_large(limit: usize) -> Self {
        SqsError {
            code: "RequestEntityTooLarge",
            query_code: "RequestEntityTooLarge",
            status: 413,
            sender_fault: true,
            message: format!("The request body is larger than {limit} bytes; send smaller batches."),
        }
    }
}

/// Errors opening or running the broker itself (not client errors).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue store {path}: {source}; check the data directory is writable and not used by another broker")]
    Store { path: std::path::PathBuf, #[source] source: rusqlite::Error },
    #[error("queue data directory {path}: {source}")]
    Io { path: std::path::PathBuf, #[source] source: std::io::Error },
    #[error("another queue broker already uses the data directory {path}; stop it, or give this one another data directory")]
    Locked { path: std::path::PathBuf },
    #[error("queue store {path} holds invalid data: {message}")]
    Corrupt { path: std::path::PathBuf, message: String },
}
