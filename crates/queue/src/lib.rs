//! The embedded SQS-compatible queue.

pub mod error;
pub mod protocol;

pub use error::SqsError;
