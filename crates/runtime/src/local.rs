//! The local runtime: tasks are processes on this machine.
