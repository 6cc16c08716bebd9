//! The form-encoded query protocol with XML responses (older SDKs).
//!
//! Translates `Action=...&QueueUrl=...&Attribute.1.Name=...` into the JSON protocol's request
//! shape, and a JSON-shaped result into the XML the query protocol returns.
//!
//! Both directions are driven by one table per action, written from the SQS API model
//! (`2012-11-05`): each member's JSON name, the name the query protocol gives it (flattened
//! lists and maps use the member's location name, e.g. `AttributeName.1`,
//! `MessageAttribute.1.Value.StringValue`, `SendMessageBatchRequestEntry.1.Id`), and its type.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::error::SqsError;

/// The XML namespace of every SQS query-protocol response.
pub const XML_NAMESPACE: &str = "http://queue.amazonaws.com/doc/2012-11-05/";

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

/// The type of one member, as the SQS API model describes it.
enum Shape {
    /// A string (blobs are base64 strings in both protocols, so they are strings here too).
    Str,
    /// An integer or long: a JSON number; text in the query form and in XML.
    Int,
    /// A boolean: JSON `true`/`false`; `true`/`false` text in XML.
    Bool,
    /// A flattened list: every item is `<Name>.<N>` in the query form and one `<Name>`
    /// element per item in XML, where `Name` is the member's query name.
    List(&'static Shape),
    /// A flattened map: entry `N` is `<Name>.<N>.<key>` and `<Name>.<N>.<value>` in the query
    /// form, and `<Name><key>k</key><value>v</value></Name>` in XML.
    Map { key: &'static str, value: &'static str, item: &'static Shape },
    /// A structure: its members in the model's order.
    Struct(&'static [Field]),
}

/// One member of a structure.
struct Field {
    /// The name in the JSON protocol.
    json: &'static str,
    /// The names in the query protocol: the first is the canonical one (used in XML); the
    /// others are accepted in requests too (SDKs and documentation disagree on a few).
    query: &'static [&'static str],
    shape: &'static Shape,
}

const fn f(json: &'static str, query: &'static [&'static str], shape: &'static Shape) -> Field {
    Field { json, query, shape }
}

static STR: Shape = Shape::Str;
static INT: Shape = Shape::Int;
static BOOL: Shape = Shape::Bool;
static STR_LIST: Shape = Shape::List(&STR);
/// Queue attributes and message system attributes: `<Attribute><Name/><Value/></Attribute>`.
static NAME_VALUE_MAP: Shape = Shape::Map { key: "Name", value: "Value", item: &STR };
static TAG_MAP: Shape = Shape::Map { key: "Key", value: "Value", item: &STR };

static MESSAGE_ATTRIBUTE_VALUE: Shape = Shape::Struct(&[
    f("StringValue", &["StringValue"], &STR),
    f("BinaryValue", &["BinaryValue"], &STR),
    f("StringListValues", &["StringListValue"], &STR_LIST),
    f("BinaryListValues", &["BinaryListValue"], &STR_LIST),
    f("DataType", &["DataType"], &STR),
]);
static MESSAGE_ATTRIBUTE_MAP: Shape =
    Shape::Map { key: "Name", value: "Value", item: &MESSAGE_ATTRIBUTE_VALUE };

// --- requests --------------------------------------------------------------------------------

static QUEUE_URL_ONLY: &[Field] = &[f("QueueUrl", &["QueueUrl"], &STR)];

static CREATE_QUEUE_REQ: &[Field] = &[
    f("QueueName", &["QueueName"], &STR),
    f("Attributes", &["Attribute", "Attributes"], &NAME_VALUE_MAP),
    f("tags", &["Tag", "Tags"], &TAG_MAP),
];
static GET_QUEUE_URL_REQ: &[Field] = &[
    f("QueueName", &["QueueName"], &STR),
    f("QueueOwnerAWSAccountId", &["QueueOwnerAWSAccountId"], &STR),
];
static LIST_QUEUES_REQ: &[Field] = &[
    f("QueueNamePrefix", &["QueueNamePrefix"], &STR),
    f("NextToken", &["NextToken"], &STR),
    f("MaxResults", &["MaxResults"], &INT),
];
static GET_QUEUE_ATTRIBUTES_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("AttributeNames", &["AttributeName", "AttributeNames"], &STR_LIST),
];
static SET_QUEUE_ATTRIBUTES_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("Attributes", &["Attribute", "Attributes"], &NAME_VALUE_MAP),
];
static SEND_MESSAGE_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("MessageBody", &["MessageBody"], &STR),
    f("DelaySeconds", &["DelaySeconds"], &INT),
    f("MessageAttributes", &["MessageAttribute", "MessageAttributes"], &MESSAGE_ATTRIBUTE_MAP),
    f("MessageSystemAttributes", &["MessageSystemAttribute", "MessageSystemAttributes"], &MESSAGE_ATTRIBUTE_MAP),
    f("MessageDeduplicationId", &["MessageDeduplicationId"], &STR),
    f("MessageGroupId", &["MessageGroupId"], &STR),
];
static SEND_MESSAGE_BATCH_ENTRY: Shape = Shape::Struct(&[
    f("Id", &["Id"], &STR),
    f("MessageBody", &["MessageBody"], &STR),
    f("DelaySeconds", &["DelaySeconds"], &INT),
    f("MessageAttributes", &["MessageAttribute", "MessageAttributes"], &MESSAGE_ATTRIBUTE_MAP),
    f("MessageSystemAttributes", &["MessageSystemAttribute", "MessageSystemAttributes"], &MESSAGE_ATTRIBUTE_MAP),
    f("MessageDeduplicationId", &["MessageDeduplicationId"], &STR),
    f("MessageGroupId", &["MessageGroupId"], &STR),
]);
static SEND_MESSAGE_BATCH_ENTRIES: Shape = Shape::List(&SEND_MESSAGE_BATCH_ENTRY);
static SEND_MESSAGE_BATCH_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("Entries", &["SendMessageBatchRequestEntry", "Entries"], &SEND_MESSAGE_BATCH_ENTRIES),
];
static RECEIVE_MESSAGE_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("AttributeNames", &["AttributeName", "AttributeNames"], &STR_LIST),
    f("MessageSystemAttributeNames", &["MessageSystemAttributeName", "MessageSystemAttributeNames"], &STR_LIST),
    f("MessageAttributeNames", &["MessageAttributeName", "MessageAttributeNames"], &STR_LIST),
    f("MaxNumberOfMessages", &["MaxNumberOfMessages"], &INT),
    f("VisibilityTimeout", &["VisibilityTimeout"], &INT),
    f("WaitTimeSeconds", &["WaitTimeSeconds"], &INT),
    f("ReceiveRequestAttemptId", &["ReceiveRequestAttemptId"], &STR),
];
static DELETE_MESSAGE_REQ: &[Field] =
    &[f("QueueUrl", &["QueueUrl"], &STR), f("ReceiptHandle", &["ReceiptHandle"], &STR)];
static DELETE_MESSAGE_BATCH_ENTRY: Shape =
    Shape::Struct(&[f("Id", &["Id"], &STR), f("ReceiptHandle", &["ReceiptHandle"], &STR)]);
static DELETE_MESSAGE_BATCH_ENTRIES: Shape = Shape::List(&DELETE_MESSAGE_BATCH_ENTRY);
static DELETE_MESSAGE_BATCH_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("Entries", &["DeleteMessageBatchRequestEntry", "Entries"], &DELETE_MESSAGE_BATCH_ENTRIES),
];
static CHANGE_MESSAGE_VISIBILITY_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("ReceiptHandle", &["ReceiptHandle"], &STR),
    f("VisibilityTimeout", &["VisibilityTimeout"], &INT),
];
static CHANGE_MESSAGE_VISIBILITY_BATCH_ENTRY: Shape = Shape::Struct(&[
    f("Id", &["Id"], &STR),
    f("ReceiptHandle", &["ReceiptHandle"], &STR),
    f("VisibilityTimeout", &["VisibilityTimeout"], &INT),
]);
static CHANGE_MESSAGE_VISIBILITY_BATCH_ENTRIES: Shape = Shape::List(&CHANGE_MESSAGE_VISIBILITY_BATCH_ENTRY);
static CHANGE_MESSAGE_VISIBILITY_BATCH_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f(
        "Entries",
        &["ChangeMessageVisibilityBatchRequestEntry", "Entries"],
        &CHANGE_MESSAGE_VISIBILITY_BATCH_ENTRIES,
    ),
];
static LIST_DEAD_LETTER_SOURCE_QUEUES_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("NextToken", &["NextToken"], &STR),
    f("MaxResults", &["MaxResults"], &INT),
];
static START_MESSAGE_MOVE_TASK_REQ: &[Field] = &[
    f("SourceArn", &["SourceArn"], &STR),
    f("DestinationArn", &["DestinationArn"], &STR),
    f("MaxNumberOfMessagesPerSecond", &["MaxNumberOfMessagesPerSecond"], &INT),
];
static LIST_MESSAGE_MOVE_TASKS_REQ: &[Field] =
    &[f("SourceArn", &["SourceArn"], &STR), f("MaxResults", &["MaxResults"], &INT)];
static CANCEL_MESSAGE_MOVE_TASK_REQ: &[Field] = &[f("TaskHandle", &["TaskHandle"], &STR)];
static TAG_QUEUE_REQ: &[Field] =
    &[f("QueueUrl", &["QueueUrl"], &STR), f("Tags", &["Tags", "Tag"], &TAG_MAP)];
static ADD_PERMISSION_REQ: &[Field] = &[
    f("QueueUrl", &["QueueUrl"], &STR),
    f("Label", &["Label"], &STR),
    f("AWSAccountIds", &["AWSAccountId", "AWSAccountIds"], &STR_LIST),
    f("Actions", &["ActionName", "Actions"], &STR_LIST),
];
static REMOVE_PERMISSION_REQ: &[Field] = &[f("QueueUrl", &["QueueUrl"], &STR), f("Label", &["Label"], &STR)];
static UNTAG_QUEUE_REQ: &[Field] =
    &[f("QueueUrl", &["QueueUrl"], &STR), f("TagKeys", &["TagKey", "TagKeys"], &STR_LIST)];

// --- results ---------------------------------------------------------------------------------

static QUEUE_URL_RESULT: &[Field] = &[f("QueueUrl", &["QueueUrl"], &STR)];
static LIST_QUEUES_RESULT: &[Field] =
    &[f("QueueUrls", &["QueueUrl"], &STR_LIST), f("NextToken", &["NextToken"], &STR)];
static LIST_DEAD_LETTER_SOURCE_QUEUES_RESULT: &[Field] = &[
    f("queueUrls", &["QueueUrl"], &STR_LIST),
    // Tolerate the capitalised spelling too: it renders the same.
    f("QueueUrls", &["QueueUrl"], &STR_LIST),
    f("NextToken", &["NextToken"], &STR),
];
static ATTRIBUTES_RESULT: &[Field] = &[f("Attributes", &["Attribute"], &NAME_VALUE_MAP)];
static SEND_MESSAGE_RESULT: &[Field] = &[
    f("MD5OfMessageBody", &["MD5OfMessageBody"], &STR),
    f("MD5OfMessageAttributes", &["MD5OfMessageAttributes"], &STR),
    f("MD5OfMessageSystemAttributes", &["MD5OfMessageSystemAttributes"], &STR),
    f("MessageId", &["MessageId"], &STR),
    f("SequenceNumber", &["SequenceNumber"], &STR),
];
static SEND_MESSAGE_BATCH_RESULT_ENTRY: Shape = Shape::Struct(&[
    f("Id", &["Id"], &STR),
    f("MessageId", &["MessageId"], &STR),
    f("MD5OfMessageBody", &["MD5OfMessageBody"], &STR),
    f("MD5OfMessageAttributes", &["MD5OfMessageAttributes"], &STR),
    f("MD5OfMessageSystemAttributes", &["MD5OfMessageSystemAttributes"], &STR),
    f("SequenceNumber", &["SequenceNumber"], &STR),
]);
static SEND_MESSAGE_BATCH_RESULT_ENTRIES: Shape = Shape::List(&SEND_MESSAGE_BATCH_RESULT_ENTRY);
static BATCH_RESULT_ERROR_ENTRY: Shape = Shape::Struct(&[
    f("Id", &["Id"], &STR),
    f("SenderFault", &["SenderFault"], &BOOL),
    f("Code", &["Code"], &STR),
    f("Message", &["Message"], &STR),
]);
static BATCH_RESULT_ERROR_ENTRIES: Shape = Shape::List(&BATCH_RESULT_ERROR_ENTRY);
static SEND_MESSAGE_BATCH_RESULT: &[Field] = &[
    f("Successful", &["SendMessageBatchResultEntry"], &SEND_MESSAGE_BATCH_RESULT_ENTRIES),
    f("Failed", &["BatchResultErrorEntry"], &BATCH_RESULT_ERROR_ENTRIES),
];
static ID_ENTRY: Shape = Shape::Struct(&[f("Id", &["Id"], &STR)]);
static ID_ENTRIES: Shape = Shape::List(&ID_ENTRY);
static DELETE_MESSAGE_BATCH_RESULT: &[Field] = &[
    f("Successful", &["DeleteMessageBatchResultEntry"], &ID_ENTRIES),
    f("Failed", &["BatchResultErrorEntry"], &BATCH_RESULT_ERROR_ENTRIES),
];
static CHANGE_MESSAGE_VISIBILITY_BATCH_RESULT: &[Field] = &[
    f("Successful", &["ChangeMessageVisibilityBatchResultEntry"], &ID_ENTRIES),
    f("Failed", &["BatchResultErrorEntry"], &BATCH_RESULT_ERROR_ENTRIES),
];
static MESSAGE: Shape = Shape::Struct(&[
    f("MessageId", &["MessageId"], &STR),
    f("ReceiptHandle", &["ReceiptHandle"], &STR),
    f("MD5OfBody", &["MD5OfBody"], &STR),
    f("Body", &["Body"], &STR),
    f("Attributes", &["Attribute"], &NAME_VALUE_MAP),
    f("MD5OfMessageAttributes", &["MD5OfMessageAttributes"], &STR),
    f("MessageAttributes", &["MessageAttribute"], &MESSAGE_ATTRIBUTE_MAP),
]);
static MESSAGES: Shape = Shape::List(&MESSAGE);
static RECEIVE_MESSAGE_RESULT: &[Field] = &[f("Messages", &["Message"], &MESSAGES)];
static TAGS_RESULT: &[Field] = &[f("Tags", &["Tag"], &TAG_MAP)];
static START_MESSAGE_MOVE_TASK_RESULT: &[Field] = &[f("TaskHandle", &["TaskHandle"], &STR)];
static MOVE_TASK_ENTRY: Shape = Shape::Struct(&[
    f("TaskHandle", &["TaskHandle"], &STR),
    f("Status", &["Status"], &STR),
    f("SourceArn", &["SourceArn"], &STR),
    f("DestinationArn", &["DestinationArn"], &STR),
    f("MaxNumberOfMessagesPerSecond", &["MaxNumberOfMessagesPerSecond"], &INT),
    f("ApproximateNumberOfMessagesMoved", &["ApproximateNumberOfMessagesMoved"], &INT),
    f("ApproximateNumberOfMessagesToMove", &["ApproximateNumberOfMessagesToMove"], &INT),
    f("FailureReason", &["FailureReason"], &STR),
    f("StartedTimestamp", &["StartedTimestamp"], &INT),
]);
static MOVE_TASK_ENTRIES: Shape = Shape::List(&MOVE_TASK_ENTRY);
static LIST_MESSAGE_MOVE_TASKS_RESULT: &[Field] =
    &[f("Results", &["ListMessageMoveTasksResultEntry"], &MOVE_TASK_ENTRIES)];
static CANCEL_MESSAGE_MOVE_TASK_RESULT: &[Field] =
    &[f("ApproximateNumberOfMessagesMoved", &["ApproximateNumberOfMessagesMoved"], &INT)];

/// One action: its request members and, when it returns something, its result members.
struct Action {
    name: &'static str,
    request: &'static [Field],
    result: Option<&'static [Field]>,
}

/// Every action the queue serves, as the query protocol spells it.
static ACTIONS: &[Action] = &[
    Action { name: "CreateQueue", request: CREATE_QUEUE_REQ, result: Some(QUEUE_URL_RESULT) },
    Action { name: "GetQueueUrl", request: GET_QUEUE_URL_REQ, result: Some(QUEUE_URL_RESULT) },
    Action { name: "ListQueues", request: LIST_QUEUES_REQ, result: Some(LIST_QUEUES_RESULT) },
    Action { name: "DeleteQueue", request: QUEUE_URL_ONLY, result: None },
    Action { name: "GetQueueAttributes", request: GET_QUEUE_ATTRIBUTES_REQ, result: Some(ATTRIBUTES_RESULT) },
    Action { name: "SetQueueAttributes", request: SET_QUEUE_ATTRIBUTES_REQ, result: None },
    Action { name: "PurgeQueue", request: QUEUE_URL_ONLY, result: None },
    Action { name: "SendMessage", request: SEND_MESSAGE_REQ, result: Some(SEND_MESSAGE_RESULT) },
    Action { name: "SendMessageBatch", request: SEND_MESSAGE_BATCH_REQ, result: Some(SEND_MESSAGE_BATCH_RESULT) },
    Action { name: "ReceiveMessage", request: RECEIVE_MESSAGE_REQ, result: Some(RECEIVE_MESSAGE_RESULT) },
    Action { name: "DeleteMessage", request: DELETE_MESSAGE_REQ, result: None },
    Action {
        name: "DeleteMessageBatch",
        request: DELETE_MESSAGE_BATCH_REQ,
        result: Some(DELETE_MESSAGE_BATCH_RESULT),
    },
    Action { name: "ChangeMessageVisibility", request: CHANGE_MESSAGE_VISIBILITY_REQ, result: None },
    Action {
        name: "ChangeMessageVisibilityBatch",
        request: CHANGE_MESSAGE_VISIBILITY_BATCH_REQ,
        result: Some(CHANGE_MESSAGE_VISIBILITY_BATCH_RESULT),
    },
    Action {
        name: "ListDeadLetterSourceQueues",
        request: LIST_DEAD_LETTER_SOURCE_QUEUES_REQ,
        result: Some(LIST_DEAD_LETTER_SOURCE_QUEUES_RESULT),
    },
    Action {
        name: "StartMessageMoveTask",
        request: START_MESSAGE_MOVE_TASK_REQ,
        result: Some(START_MESSAGE_MOVE_TASK_RESULT),
    },
    Action {
        name: "ListMessageMoveTasks",
        request: LIST_MESSAGE_MOVE_TASKS_REQ,
        result: Some(LIST_MESSAGE_MOVE_TASKS_RESULT),
    },
    Action {
        name: "CancelMessageMoveTask",
        request: CANCEL_MESSAGE_MOVE_TASK_REQ,
        result: Some(CANCEL_MESSAGE_MOVE_TASK_RESULT),
    },
    Action { name: "TagQueue", request: TAG_QUEUE_REQ, result: None },
    Action { name: "UntagQueue", request: UNTAG_QUEUE_REQ, result: None },
    Action { name: "ListQueueTags", request: QUEUE_URL_ONLY, result: Some(TAGS_RESULT) },
    Action { name: "AddPermission", request: ADD_PERMISSION_REQ, result: None },
    Action { name: "RemovePermission", request: REMOVE_PERMISSION_REQ, result: None },
];

fn find_action(name: &str) -> Option<&'static Action> {
    ACTIONS.iter().find(|a| a.name == name)
}

/// The names of every action the query protocol accepts.
pub fn action_names() -> impl Iterator<Item = &'static str> {
    ACTIONS.iter().map(|a| a.name)
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The form parameters as a tree of their dotted names: `Attribute.1.Name=x` is
/// `children["Attribute"].children["1"].children["Name"].value == "x"`.
#[derive(Default, Debug)]
struct Node<'a> {
    value: Option<&'a str>,
    children: BTreeMap<&'a str, Node<'a>>,
}

impl<'a> Node<'a> {
    fn insert(&mut self, key: &'a str, value: &'a str) {
        let mut node = self;
        for segment in key.split('.') {
            node = node.children.entry(segment).or_default();
        }
        // The first occurrence of a parameter wins.
        if node.value.is_none() {
            node.value = Some(value);
        }
    }
}

/// Most dot-separated parts of a parameter name: the deepest the SQS model has is 7
/// (`SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringListValue.1`).
pub const MAX_KEY_PARTS: usize = 8;
/// Longest parameter name.
pub const MAX_KEY_LEN: usize = 256;

/// Refuse a parameter name no action has: too long or too deeply dotted. This keeps the key
/// tree shallow whatever a client sends.
fn check_key(key: &str) -> Result<(), SqsError> {
    let parts = key.bytes().filter(|b| *b == b'.').count() + 1;
    if key.len() <= MAX_KEY_LEN && parts <= MAX_KEY_PARTS {
        return Ok(());
    }
    let shown: String = key.chars().take(60).collect();
    Err(SqsError::invalid_parameter(format!(
        "The parameter {shown}{} is not valid: it is {} bytes long with {parts} dot-separated parts; SQS parameter names have at most {MAX_KEY_PARTS} parts and {MAX_KEY_LEN} bytes.",
        if shown.len() < key.len() { "..." } else { "" },
        key.len()
    )))
}

/// Parse a query-protocol request (form parameters, from the body or the URL) into its action
/// name and the request as the JSON protocol would have sent it.
///
/// Parameters that SQS does not define for the action (`Version`, `AWSAccessKeyId`,
/// `Signature`, ...) are ignored. Required parameters are not checked here: the engine checks
/// them for both protocols alike.
pub fn parse_request(params: &[(String, String)]) -> Result<(String, Value), SqsError> {
    let action_name = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            SqsError::client(
                "MissingAction",
                "The request must contain the parameter Action (for example Action=SendMessage).",
            )
        })?;
    let action = find_action(action_name).ok_or_else(|| {
        SqsError::client("InvalidAction", format!("The action {action_name} is not valid for this endpoint."))
    })?;
    let mut root = Node::default();
    for (key, value) in params {
        if key != "Action" {
            check_key(key)?;
            root.insert(key.as_str(), value.as_str());
        }
    }
    let request = parse_struct(&root, action.request, &Path::Root)?;
    Ok((action.name.to_owned(), request))
}

/// Where a value sits in the request (`SendMessageBatchRequestEntry.2.DelaySeconds`), kept as a
/// chain of references and spelled out only for an error message.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Name(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, u32),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Name(Path::Root, name) => f.write_str(name),
            Path::Name(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, n) => write!(f, "{parent}.{n}"),
        }
    }
}

fn parse_struct(node: &Node, fields: &[Field], path: &Path) -> Result<Value, SqsError> {
    let mut out = Map::new();
    for field in fields {
        let found = field.query.iter().find_map(|name| node.children.get(*name).map(|child| (*name, child)));
        match found {
            Some((name, child)) => {
                let value = parse_value(child, field.shape, &Path::Name(path, name))?;
                if !value.is_null() {
                    out.insert(field.json.to_owned(), value);
                }
            }
            None => {
                // An empty list or map is sent as `Name=` with no items (botocore does so).
                if let Some(child) = node.children.get(field.json) {
                    match field.shape {
                        Shape::List(_) if child.value == Some("") => {
                            out.insert(field.json.to_owned(), Value::Array(Vec::new()));
                        }
                        Shape::Map { .. } if child.value == Some("") => {
                            out.insert(field.json.to_owned(), Value::Object(Map::new()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The numbered items of a flattened list or map (`Name.1`, `Name.2`, ...), in index order.
fn numbered<'n, 'a>(node: &'n Node<'a>, path: &Path) -> Result<Vec<(u32, &'n Node<'a>)>, SqsError> {
    let mut items = Vec::with_capacity(node.children.len());
    for (index, child) in &node.children {
        let n: u32 = index.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            SqsError::invalid_parameter(format!(
                "The parameter {path}.{index} is not valid: items of {path} are numbered from 1 ({path}.1, {path}.2, ...)."
            ))
        })?;
        items.push((n, child));
    }
    items.sort_unstable_by_key(|(n, _)| *n);
    Ok(items)
}

fn parse_value(node: &Node, shape: &Shape, path: &Path) -> Result<Value, SqsError> {
    match shape {
        Shape::Str => Ok(node.value.map(|v| Value::String(v.to_owned())).unwrap_or(Value::Null)),
        Shape::Int => match node.value {
            None => Ok(Value::Null),
            Some(text) => text.trim().parse::<i64>().map(|n| Value::Number(Number::from(n))).map_err(|_| {
                SqsError::invalid_parameter(format!(
                    "Value {text} for parameter {path} is invalid. Reason: must be an integer."
                ))
            }),
        },
        Shape::Bool => match node.value {
            None => Ok(Value::Null),
            Some("true") => Ok(Value::Bool(true)),
            Some("false") => Ok(Value::Bool(false)),
            Some(text) => Err(SqsError::invalid_parameter(format!(
                "Value {text} for parameter {path} is invalid. Reason: must be true or false."
            ))),
        },
        Shape::List(item) => {
            let mut out = Vec::with_capacity(node.children.len());
            // A single unnumbered value (`AttributeName=All`) counts as the first item.
            if let Some(value) = node.value.filter(|v| !v.is_empty()) {
                if matches!(item, Shape::Str) {
                    out.push(Value::String(value.to_owned()));
                }
            }
            for (n, child) in numbered(node, path)? {
                let value = parse_value(child, item, &Path::Index(path, n))?;
                if !value.is_null() {
                    out.push(value);
                }
            }
            Ok(Value::Array(out))
        }
        Shape::Map { key, value, item } => {
            let mut out = Map::new();
            for (n, child) in numbered(node, path)? {
                let entry = Path::Index(path, n);
                let name = child.children.get(*key).and_then(|k| k.value).map(str::to_owned).ok_or_else(|| {
                    SqsError::missing_parameter(&format!("{entry}.{key}"))
                })?;
                let parsed = match child.children.get(*value) {
                    Some(v) => parse_value(v, item, &Path::Name(&entry, value))?,
                    None => Value::Null,
                };
                let parsed = match (parsed, item) {
                    (Value::Null, Shape::Str) => {
                        return Err(SqsError::missing_parameter(&format!("{entry}.{value}")));
                    }
                    (Value::Null, _) => Value::Object(Map::new()),
                    (v, _) => v,
                };
                out.insert(name, parsed);
            }
            Ok(Value::Object(out))
        }
        Shape::Struct(fields) => parse_struct(node, fields, path),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Render an action's JSON-shaped result as the query protocol's XML response.
pub fn render_response(action: &str, result: &Value, request_id: &str) -> String {
    let mut xml = String::with_capacity(256);
    xml.push_str("<?xml version=\"1.0\"?>");
    xml.push_str(&format!("<{action}Response xmlns=\"{XML_NAMESPACE}\">"));
    match find_action(action) {
        Some(Action { result: Some(fields), .. }) => {
            xml.push_str(&format!("<{action}Result>"));
            render_struct(&mut xml, result, fields);
            xml.push_str(&format!("</{action}Result>"));
        }
        Some(Action { result: None, .. }) => {}
        None => {
            tracing::warn!(action, "rendering a query-protocol response for an action it does not define");
        }
    }
    xml.push_str("<ResponseMetadata><RequestId>");
    escape_into(&mut xml, request_id);
    xml.push_str("</RequestId></ResponseMetadata>");
    xml.push_str(&format!("</{action}Response>"));
    xml
}

/// Render an error as the query protocol's XML `ErrorResponse`.
pub fn render_error(err: &SqsError, request_id: &str) -> String {
    let mut xml = String::with_capacity(256);
    xml.push_str("<?xml version=\"1.0\"?>");
    xml.push_str(&format!("<ErrorResponse xmlns=\"{XML_NAMESPACE}\"><Error><Type>"));
    xml.push_str(if err.sender_fault { "Sender" } else { "Receiver" });
    xml.push_str("</Type><Code>");
    escape_into(&mut xml, err.query_code);
    xml.push_str("</Code><Message>");
    escape_into(&mut xml, &err.message);
    xml.push_str("</Message><Detail/></Error><RequestId>");
    escape_into(&mut xml, request_id);
    xml.push_str("</RequestId></ErrorResponse>");
    xml
}

fn render_struct(xml: &mut String, value: &Value, fields: &[Field]) {
    let Some(object) = value.as_object() else { return };
    for field in fields {
        let Some(member) = object.get(field.json).filter(|v| !v.is_null()) else { continue };
        let name = field.query[0];
        match field.shape {
            Shape::List(item) => {
                for element in member.as_array().map(Vec::as_slice).unwrap_or_default() {
                    open(xml, name);
                    render_value(xml, element, item);
                    close(xml, name);
                }
            }
            Shape::Map { key, value, item } => {
                for (k, v) in member.as_object().into_iter().flatten() {
                    open(xml, name);
                    open(xml, key);
                    escape_into(xml, k);
                    close(xml, key);
                    open(xml, value);
                    render_value(xml, v, item);
                    close(xml, value);
                    close(xml, name);
                }
            }
            _ => {
                open(xml, name);
                render_value(xml, member, field.shape);
                close(xml, name);
            }
        }
    }
}

fn render_value(xml: &mut String, value: &Value, shape: &Shape) {
    match (shape, value) {
        (Shape::Struct(fields), _) => render_struct(xml, value, fields),
        (_, Value::String(s)) => escape_into(xml, s),
        (_, Value::Number(n)) => xml.push_str(&n.to_string()),
        (_, Value::Bool(b)) => xml.push_str(if *b { "true" } else { "false" }),
        (_, Value::Null) => {}
        // A list or object where the model has a scalar: render it as JSON text rather than
        // drop it silently.
        (_, other) => escape_into(xml, &other.to_string()),
    }
}

fn open(xml: &mut String, name: &str) {
    xml.push('<');
    xml.push_str(name);
    xml.push('>');
}

fn close(xml: &mut String, name: &str) {
    xml.push_str("</");
    xml.push_str(name);
    xml.push('>');
}

/// Escape text for an XML element. `\r` is written as `&#xD;` because XML parsers turn a
/// literal CR (and CR LF) into LF; characters XML 1.0 cannot carry at all (other control
/// characters, U+FFFE, U+FFFF) — which SQS never accepts in a message — become U+FFFD.
pub fn escape_into(xml: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => xml.push_str("&amp;"),
            '<' => xml.push_str("&lt;"),
            '>' => xml.push_str("&gt;"),
            '"' => xml.push_str("&quot;"),
            '\r' => xml.push_str("&#xD;"),
            '\t' | '\n' => xml.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => xml.push('\u{FFFD}'),
            c => xml.push(c),
        }
    }
}

/// [`escape_into`] into a new string.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> (String, Value) {
        parse_request(&params(pairs)).expect("request parses")
    }

    fn parse_err(pairs: &[(&str, &str)]) -> SqsError {
        parse_request(&params(pairs)).expect_err("request is rejected")
    }

    const URL: &str = "http://127.0.0.1:9324/000000000000/jobs";

    #[test]
    fn send_message_with_attributes_of_every_type() {
        let (action, req) = parse(&[
            ("Action", "SendMessage"),
            ("Version", "2012-11-05"),
            ("QueueUrl", URL),
            ("MessageBody", "hello <world> & all"),
            ("DelaySeconds", "5"),
            ("MessageAttribute.1.Name", "s"),
            ("MessageAttribute.1.Value.DataType", "String"),
            ("MessageAttribute.1.Value.StringValue", "x"),
            ("MessageAttribute.2.Name", "n"),
            ("MessageAttribute.2.Value.DataType", "Number.int"),
            ("MessageAttribute.2.Value.StringValue", "42"),
            ("MessageAttribute.3.Name", "b"),
            ("MessageAttribute.3.Value.DataType", "Binary"),
            ("MessageAttribute.3.Value.BinaryValue", "AAEC"),
            ("MessageSystemAttribute.1.Name", "AWSTraceHeader"),
            ("MessageSystemAttribute.1.Value.DataType", "String"),
            ("MessageSystemAttribute.1.Value.StringValue", "Root=1-5759e988-bd862e3fe1be46a994272793"),
        ]);
        assert_eq!(action, "SendMessage");
        assert_eq!(
            req,
            json!({
                "QueueUrl": URL,
                "MessageBody": "hello <world> & all",
                "DelaySeconds": 5,
                "MessageAttributes": {
                    "s": {"DataType": "String", "StringValue": "x"},
                    "n": {"DataType": "Number.int", "StringValue": "42"},
                    "b": {"DataType": "Binary", "BinaryValue": "AAEC"},
                },
                "MessageSystemAttributes": {
                    "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe1be46a994272793"},
                },
            })
        );
    }

    #[test]
    fn list_values_of_message_attributes() {
        let (_, req) = parse(&[
            ("Action", "SendMessage"),
            ("MessageAttribute.1.Name", "l"),
            ("MessageAttribute.1.Value.DataType", "String"),
            ("MessageAttribute.1.Value.StringListValue.2", "b"),
            ("MessageAttribute.1.Value.StringListValue.1", "a"),
        ]);
        assert_eq!(req["MessageAttributes"]["l"]["StringListValues"], json!(["a", "b"]));
    }

    #[test]
    fn items_are_ordered_by_number_not_text() {
        let mut pairs = vec![("Action".to_string(), "DeleteMessageBatch".to_string())];
        for n in (1..=10).rev() {
            pairs.push((format!("DeleteMessageBatchRequestEntry.{n}.Id"), format!("id{n}")));
            pairs.push((format!("DeleteMessageBatchRequestEntry.{n}.ReceiptHandle"), format!("rh{n}")));
        }
        let (_, req) = parse_request(&pairs).unwrap();
        let ids: Vec<&str> = req["Entries"].as_array().unwrap().iter().map(|e| e["Id"].as_str().unwrap()).collect();
        assert_eq!(ids, (1..=10).map(|n| format!("id{n}")).collect::<Vec<_>>());
        assert_eq!(req["Entries"][9], json!({"Id": "id10", "ReceiptHandle": "rh10"}));
    }

    #[test]
    fn send_message_batch_entries() {
        let (action, req) = parse(&[
            ("Action", "SendMessageBatch"),
            ("QueueUrl", URL),
            ("SendMessageBatchRequestEntry.1.Id", "a"),
            ("SendMessageBatchRequestEntry.1.MessageBody", "one"),
            ("SendMessageBatchRequestEntry.1.DelaySeconds", "3"),
            ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Name", "k"),
            ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType", "String"),
            ("SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue", "v"),
            ("SendMessageBatchRequestEntry.2.Id", "b"),
            ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
            ("SendMessageBatchRequestEntry.2.MessageGroupId", "g"),
            ("SendMessageBatchRequestEntry.2.MessageDeduplicationId", "d"),
        ]);
        assert_eq!(action, "SendMessageBatch");
        assert_eq!(
            req,
            json!({
                "QueueUrl": URL,
                "Entries": [
                    {"Id": "a", "MessageBody": "one", "DelaySeconds": 3,
                     "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
                    {"Id": "b", "MessageBody": "two", "MessageGroupId": "g", "MessageDeduplicationId": "d"},
                ]
            })
        );
    }

    #[test]
    fn change_message_visibility_batch_entries() {
        let (_, req) = parse(&[
            ("Action", "ChangeMessageVisibilityBatch"),
            ("QueueUrl", URL),
            ("ChangeMessageVisibilityBatchRequestEntry.1.Id", "a"),
            ("ChangeMessageVisibilityBatchRequestEntry.1.ReceiptHandle", "rh"),
            ("ChangeMessageVisibilityBatchRequestEntry.1.VisibilityTimeout", "60"),
        ]);
        assert_eq!(req, json!({"QueueUrl": URL, "Entries": [{"Id": "a", "ReceiptHandle": "rh", "VisibilityTimeout": 60}]}));
    }

    #[test]
    fn empty_batch_is_an_empty_list() {
        let (_, req) = parse(&[("Action", "SendMessageBatch"), ("QueueUrl", URL), ("Entries", "")]);
        assert_eq!(req, json!({"QueueUrl": URL, "Entries": []}));
    }

    #[test]
    fn receive_message_lists_and_integers() {
        let (_, req) = parse(&[
            ("Action", "ReceiveMessage"),
            ("QueueUrl", URL),
            ("AttributeName.1", "All"),
            ("MessageSystemAttributeName.1", "SenderId"),
            ("MessageAttributeName.1", "a"),
            ("MessageAttributeName.2", "b.*"),
            ("MaxNumberOfMessages", "10"),
            ("VisibilityTimeout", "0"),
            ("WaitTimeSeconds", "20"),
            ("ReceiveRequestAttemptId", "x"),
        ]);
        assert_eq!(
            req,
            json!({
                "QueueUrl": URL,
                "AttributeNames": ["All"],
                "MessageSystemAttributeNames": ["SenderId"],
                "MessageAttributeNames": ["a", "b.*"],
                "MaxNumberOfMessages": 10,
                "VisibilityTimeout": 0,
                "WaitTimeSeconds": 20,
                "ReceiveRequestAttemptId": "x",
            })
        );
    }

    #[test]
    fn queue_attributes_and_tags() {
        let (_, req) = parse(&[
            ("Action", "CreateQueue"),
            ("QueueName", "jobs"),
            ("Attribute.1.Name", "VisibilityTimeout"),
            ("Attribute.1.Value", "300"),
            ("Attribute.2.Name", "RedrivePolicy"),
            ("Attribute.2.Value", r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":"1"}"#),
            ("Tag.1.Key", "team"),
            ("Tag.1.Value", "blue"),
        ]);
        assert_eq!(
            req,
            json!({
                "QueueName": "jobs",
                "Attributes": {
                    "VisibilityTimeout": "300",
                    "RedrivePolicy": r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":"1"}"#,
                },
                "tags": {"team": "blue"},
            })
        );
        let (_, req) = parse(&[("Action", "GetQueueAttributes"), ("QueueUrl", URL), ("AttributeName.1", "All")]);
        assert_eq!(req, json!({"QueueUrl": URL, "AttributeNames": ["All"]}));
        let (_, req) = parse(&[
            ("Action", "SetQueueAttributes"),
            ("QueueUrl", URL),
            ("Attribute.1.Name", "DelaySeconds"),
            ("Attribute.1.Value", "0"),
        ]);
        assert_eq!(req, json!({"QueueUrl": URL, "Attributes": {"DelaySeconds": "0"}}));
        // botocore names TagQueue's map `Tags`; the SQS documentation names it `Tag`.
        for prefix in ["Tags", "Tag"] {
            let (key, value) = (format!("{prefix}.1.Key"), format!("{prefix}.1.Value"));
            let (_, req) = parse(&[("Action", "TagQueue"), ("QueueUrl", URL), (&key, "a"), (&value, "1")]);
            assert_eq!(req, json!({"QueueUrl": URL, "Tags": {"a": "1"}}));
        }
        let (_, req) = parse(&[("Action", "UntagQueue"), ("QueueUrl", URL), ("TagKey.1", "a"), ("TagKey.2", "b")]);
        assert_eq!(req, json!({"QueueUrl": URL, "TagKeys": ["a", "b"]}));
    }

    #[test]
    fn the_other_actions() {
        let cases: Vec<(Vec<(&str, &str)>, Value)> = vec![
            (vec![("Action", "GetQueueUrl"), ("QueueName", "jobs"), ("QueueOwnerAWSAccountId", "000000000000")],
             json!({"QueueName": "jobs", "QueueOwnerAWSAccountId": "000000000000"})),
            (vec![("Action", "ListQueues"), ("QueueNamePrefix", "j"), ("MaxResults", "2"), ("NextToken", "t")],
             json!({"QueueNamePrefix": "j", "MaxResults": 2, "NextToken": "t"})),
            (vec![("Action", "DeleteQueue"), ("QueueUrl", URL)], json!({"QueueUrl": URL})),
            (vec![("Action", "PurgeQueue"), ("QueueUrl", URL)], json!({"QueueUrl": URL})),
            (vec![("Action", "ListQueueTags"), ("QueueUrl", URL)], json!({"QueueUrl": URL})),
            (vec![("Action", "DeleteMessage"), ("QueueUrl", URL), ("ReceiptHandle", "r+h/=")],
             json!({"QueueUrl": URL, "ReceiptHandle": "r+h/="})),
            (vec![("Action", "ChangeMessageVisibility"), ("QueueUrl", URL), ("ReceiptHandle", "rh"), ("VisibilityTimeout", "30")],
             json!({"QueueUrl": URL, "ReceiptHandle": "rh", "VisibilityTimeout": 30})),
            (vec![("Action", "ListDeadLetterSourceQueues"), ("QueueUrl", URL), ("MaxResults", "5")],
             json!({"QueueUrl": URL, "MaxResults": 5})),
            (vec![("Action", "StartMessageMoveTask"), ("SourceArn", "arn:a"), ("DestinationArn", "arn:b"), ("MaxNumberOfMessagesPerSecond", "50")],
             json!({"SourceArn": "arn:a", "DestinationArn": "arn:b", "MaxNumberOfMessagesPerSecond": 50})),
            (vec![("Action", "ListMessageMoveTasks"), ("SourceArn", "arn:a"), ("MaxResults", "10")],
             json!({"SourceArn": "arn:a", "MaxResults": 10})),
            (vec![("Action", "CancelMessageMoveTask"), ("TaskHandle", "th")], json!({"TaskHandle": "th"})),
        ];
        for (pairs, expected) in cases {
            let (action, req) = parse(&pairs);
            assert_eq!(action, pairs[0].1);
            assert_eq!(req, expected, "{action}");
        }
    }

    #[test]
    fn every_action_of_the_queue_is_known() {
        let names: Vec<&str> = action_names().collect();
        assert_eq!(names.len(), 23);
        for name in names {
            let (action, _) = parse(&[("Action", name)]);
            assert_eq!(action, name);
        }
    }

    #[test]
    fn signing_parameters_are_ignored() {
        let (_, req) = parse(&[
            ("Action", "PurgeQueue"),
            ("QueueUrl", URL),
            ("Version", "2012-11-05"),
            ("AWSAccessKeyId", "AKID"),
            ("SignatureVersion", "2"),
            ("Signature", "abc"),
        ]);
        assert_eq!(req, json!({"QueueUrl": URL}));
    }

    #[test]
    fn missing_or_unknown_action() {
        let err = parse_err(&[("QueueUrl", URL)]);
        assert_eq!((err.code, err.status), ("MissingAction", 400));
        assert!(err.message.contains("Action"), "{}", err.message);
        let err = parse_err(&[("Action", "")]);
        assert_eq!(err.code, "MissingAction");
        let err = parse_err(&[("Action", "SummonQueue"), ("QueueUrl", URL)]);
        assert_eq!((err.code, err.query_code, err.status), ("InvalidAction", "InvalidAction", 400));
        assert!(err.message.contains("SummonQueue"), "{}", err.message);
    }

    #[test]
    fn bad_integer_names_the_parameter() {
        let err = parse_err(&[("Action", "ReceiveMessage"), ("QueueUrl", URL), ("MaxNumberOfMessages", "ten")]);
        assert_eq!(err.code, "InvalidParameterValue");
        assert!(err.message.contains("MaxNumberOfMessages") && err.message.contains("ten"), "{}", err.message);
        let err = parse_err(&[
            ("Action", "SendMessageBatch"),
            ("SendMessageBatchRequestEntry.2.Id", "x"),
            ("SendMessageBatchRequestEntry.2.DelaySeconds", "1.5"),
        ]);
        assert!(err.message.contains("SendMessageBatchRequestEntry.2.DelaySeconds"), "{}", err.message);
    }

    #[test]
    fn malformed_maps_and_indexes() {
        let err = parse_err(&[("Action", "SetQueueAttributes"), ("Attribute.1.Value", "3")]);
        assert_eq!(err.code, "MissingParameter");
        assert!(err.message.contains("Attribute.1.Name"), "{}", err.message);
        let err = parse_err(&[("Action", "SetQueueAttributes"), ("Attribute.1.Name", "DelaySeconds")]);
        assert!(err.message.contains("Attribute.1.Value"), "{}", err.message);
        let err = parse_err(&[("Action", "UntagQueue"), ("TagKey.first", "a")]);
        assert_eq!(err.code, "InvalidParameterValue");
        assert!(err.message.contains("TagKey.first"), "{}", err.message);
        let err = parse_err(&[("Action", "UntagQueue"), ("TagKey.0", "a")]);
        assert_eq!(err.code, "InvalidParameterValue");
    }

    fn body_of(xml: &str, action: &str) -> String {
        let start = format!("<{action}Result>");
        let end = format!("</{action}Result>");
        let a = xml.find(&start).unwrap_or_else(|| panic!("no {start} in {xml}")) + start.len();
        let b = xml.find(&end).unwrap_or_else(|| panic!("no {end} in {xml}"));
        xml[a..b].to_string()
    }

    #[test]
    fn send_message_response() {
        let xml = render_response(
            "SendMessage",
            &json!({"MessageId": "m-1", "MD5OfMessageBody": "abc", "MD5OfMessageAttributes": "def"}),
            "req-1",
        );
        assert_eq!(
            xml,
            "<?xml version=\"1.0\"?><SendMessageResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">\
             <SendMessageResult><MD5OfMessageBody>abc</MD5OfMessageBody><MD5OfMessageAttributes>def</MD5OfMessageAttributes>\
             <MessageId>m-1</MessageId></SendMessageResult>\
             <ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata></SendMessageResponse>"
        );
    }

    #[test]
    fn actions_without_a_result_have_only_metadata() {
        for action in ["DeleteMessage", "DeleteQueue", "PurgeQueue", "SetQueueAttributes", "TagQueue", "UntagQueue", "ChangeMessageVisibility"] {
            let xml = render_response(action, &json!({}), "r");
            assert_eq!(
                xml,
                format!(
                    "<?xml version=\"1.0\"?><{action}Response xmlns=\"{XML_NAMESPACE}\"><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
                )
            );
        }
    }

    #[test]
    fn receive_message_response() {
        let xml = render_response(
            "ReceiveMessage",
            &json!({"Messages": [{
                "MessageId": "m-1",
                "ReceiptHandle": "rh+/=",
                "MD5OfBody": "b5",
                "Body": "a<b>&c\r\n\"d'\t",
                "Attributes": {"ApproximateReceiveCount": "1", "SenderId": "AKID"},
                "MD5OfMessageAttributes": "a5",
                "MessageAttributes": {
                    "bin": {"DataType": "Binary", "BinaryValue": "AAE="},
                    "num": {"DataType": "Number", "StringValue": "1.5"},
                },
            }, {"MessageId": "m-2", "Body": "x"}]}),
            "r",
        );
        assert_eq!(
            body_of(&xml, "ReceiveMessage"),
            "<Message><MessageId>m-1</MessageId><ReceiptHandle>rh+/=</ReceiptHandle><MD5OfBody>b5</MD5OfBody>\
             <Body>a&lt;b&gt;&amp;c&#xD;\n&quot;d'\t</Body>\
             <Attribute><Name>ApproximateReceiveCount</Name><Value>1</Value></Attribute>\
             <Attribute><Name>SenderId</Name><Value>AKID</Value></Attribute>\
             <MD5OfMessageAttributes>a5</MD5OfMessageAttributes>\
             <MessageAttribute><Name>bin</Name><Value><BinaryValue>AAE=</BinaryValue><DataType>Binary</DataType></Value></MessageAttribute>\
             <MessageAttribute><Name>num</Name><Value><StringValue>1.5</StringValue><DataType>Number</DataType></Value></MessageAttribute>\
             </Message><Message><MessageId>m-2</MessageId><Body>x</Body></Message>"
        );
        // No message: an empty result element.
        let xml = render_response("ReceiveMessage", &json!({}), "r");
        assert_eq!(body_of(&xml, "ReceiveMessage"), "");
        let xml = render_response("ReceiveMessage", &json!({"Messages": []}), "r");
        assert_eq!(body_of(&xml, "ReceiveMessage"), "");
    }

    #[test]
    fn batch_responses() {
        let xml = render_response(
            "SendMessageBatch",
            &json!({
                "Successful": [{"Id": "a", "MessageId": "m", "MD5OfMessageBody": "5", "SequenceNumber": "1"}],
                "Failed": [{"Id": "b", "SenderFault": true, "Code": "InvalidParameterValue", "Message": "bad <body>"}],
            }),
            "r",
        );
        assert_eq!(
            body_of(&xml, "SendMessageBatch"),
            "<SendMessageBatchResultEntry><Id>a</Id><MessageId>m</MessageId><MD5OfMessageBody>5</MD5OfMessageBody>\
             <SequenceNumber>1</SequenceNumber></SendMessageBatchResultEntry>\
             <BatchResultErrorEntry><Id>b</Id><SenderFault>true</SenderFault><Code>InvalidParameterValue</Code>\
             <Message>bad &lt;body&gt;</Message></BatchResultErrorEntry>"
        );
        let xml = render_response(
            "DeleteMessageBatch",
            &json!({"Successful": [{"Id": "a"}], "Failed": [{"Id": "b", "SenderFault": false, "Code": "InternalError"}]}),
            "r",
        );
        assert_eq!(
            body_of(&xml, "DeleteMessageBatch"),
            "<DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>\
             <BatchResultErrorEntry><Id>b</Id><SenderFault>false</SenderFault><Code>InternalError</Code></BatchResultErrorEntry>"
        );
        let xml = render_response("ChangeMessageVisibilityBatch", &json!({"Successful": [{"Id": "a"}], "Failed": []}), "r");
        assert_eq!(
            body_of(&xml, "ChangeMessageVisibilityBatch"),
            "<ChangeMessageVisibilityBatchResultEntry><Id>a</Id></ChangeMessageVisibilityBatchResultEntry>"
        );
    }

    #[test]
    fn queue_level_responses() {
        let cases = [
            ("CreateQueue", json!({"QueueUrl": URL}), format!("<QueueUrl>{URL}</QueueUrl>")),
            ("GetQueueUrl", json!({"QueueUrl": URL}), format!("<QueueUrl>{URL}</QueueUrl>")),
            (
                "ListQueues",
                json!({"QueueUrls": ["u1", "u2"], "NextToken": "t"}),
                "<QueueUrl>u1</QueueUrl><QueueUrl>u2</QueueUrl><NextToken>t</NextToken>".to_string(),
            ),
            ("ListQueues", json!({}), String::new()),
            ("ListDeadLetterSourceQueues", json!({"queueUrls": ["u1"]}), "<QueueUrl>u1</QueueUrl>".to_string()),
            (
                "GetQueueAttributes",
                json!({"Attributes": {"DelaySeconds": "0", "Policy": "{\"a\":\"<b>\"}"}}),
                "<Attribute><Name>DelaySeconds</Name><Value>0</Value></Attribute>\
                 <Attribute><Name>Policy</Name><Value>{&quot;a&quot;:&quot;&lt;b&gt;&quot;}</Value></Attribute>"
                    .to_string(),
            ),
            (
                "ListQueueTags",
                json!({"Tags": {"team": "blue"}}),
                "<Tag><Key>team</Key><Value>blue</Value></Tag>".to_string(),
            ),
            ("StartMessageMoveTask", json!({"TaskHandle": "th"}), "<TaskHandle>th</TaskHandle>".to_string()),
            (
                "CancelMessageMoveTask",
                json!({"ApproximateNumberOfMessagesMoved": 7}),
                "<ApproximateNumberOfMessagesMoved>7</ApproximateNumberOfMessagesMoved>".to_string(),
            ),
            (
                "ListMessageMoveTasks",
                json!({"Results": [{"TaskHandle": "th", "Status": "RUNNING", "SourceArn": "arn:a",
                                    "ApproximateNumberOfMessagesMoved": 1, "ApproximateNumberOfMessagesToMove": 3,
                                    "StartedTimestamp": 1700000000000i64}]}),
                "<ListMessageMoveTasksResultEntry><TaskHandle>th</TaskHandle><Status>RUNNING</Status>\
                 <SourceArn>arn:a</SourceArn><ApproximateNumberOfMessagesMoved>1</ApproximateNumberOfMessagesMoved>\
                 <ApproximateNumberOfMessagesToMove>3</ApproximateNumberOfMessagesToMove>\
                 <StartedTimestamp>1700000000000</StartedTimestamp></ListMessageMoveTasksResultEntry>"
                    .to_string(),
            ),
        ];
        for (action, result, expected) in cases {
            let xml = render_response(action, &result, "r");
            assert_eq!(body_of(&xml, action), expected, "{action}");
        }
    }

    #[test]
    fn error_response() {
        let err = SqsError::client_legacy(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist for this wsdl version.",
        );
        assert_eq!(
            render_error(&err, "r-1"),
            "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><Error>\
             <Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>\
             <Message>The specified queue does not exist for this wsdl version.</Message><Detail/></Error>\
             <RequestId>r-1</RequestId></ErrorResponse>"
        );
        let err = SqsError::internal("disk <full> & more");
        let xml = render_error(&err, "r");
        assert!(xml.contains("<Type>Receiver</Type><Code>InternalFailure</Code><Message>disk &lt;full&gt; &amp; more</Message>"), "{xml}");
    }

    #[test]
    fn escaping_keeps_every_allowed_character() {
        assert_eq!(escape("\t\n\r <>&\"' é 😀 \u{D7FF}\u{E000}\u{FFFD}"), "\t\n&#xD; &lt;&gt;&amp;&quot;' é 😀 \u{D7FF}\u{E000}\u{FFFD}");
        // Characters XML cannot carry do not break the document.
        assert_eq!(escape("a\u{0}b\u{1F}c\u{FFFF}"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}");
    }

    #[test]
    fn a_request_renders_back_to_what_was_sent() {
        // SendMessage in, ReceiveMessage out: the attributes the client sent come back whole.
        let (_, req) = parse(&[
            ("Action", "SendMessage"),
            ("QueueUrl", URL),
            ("MessageBody", "x\r\ny"),
            ("MessageAttribute.1.Name", "s"),
            ("MessageAttribute.1.Value.DataType", "String.custom"),
            ("MessageAttribute.1.Value.StringValue", "<v>"),
        ]);
        let message = json!({
            "MessageId": "m",
            "Body": req["MessageBody"],
            "MessageAttributes": req["MessageAttributes"],
        });
        let xml = render_response("ReceiveMessage", &json!({"Messages": [message]}), "r");
        assert!(xml.contains("<Body>x&#xD;\ny</Body>"), "{xml}");
        assert!(
            xml.contains("<MessageAttribute><Name>s</Name><Value><StringValue>&lt;v&gt;</StringValue><DataType>String.custom</DataType></Value></MessageAttribute>"),
            "{xml}"
        );
    }
}
