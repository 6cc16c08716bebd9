//! Wire protocols. Both translate to and from one action-level shape: the request and the
//! result of an action as the AWS JSON 1.0 protocol spells them (`serde_json::Value`), so the
//! engine implements each action once. The busiest actions' JSON requests are also read typed
//! (`json`), with the same checks and answers, and without the `Value` in between.

pub(crate) mod json;
pub mod query;
