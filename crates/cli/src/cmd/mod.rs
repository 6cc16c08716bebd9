//! One module per command.

pub mod queue;
pub mod send;
pub mod supervise;
