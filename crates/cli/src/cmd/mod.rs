//! One module per command.

pub mod ctl;
pub mod demo;
pub mod down;
pub mod init;
pub mod proxy;
pub mod queue;
pub mod send;
pub mod supervise;
pub mod synth;
pub mod up;
pub mod validate;
