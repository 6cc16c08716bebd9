//! coalmine-spec: `coalmine.toml` and `buildspec.yml` — types, parsing, validation, diagnostics.

mod diag;
mod types;

pub use diag::{did_you_mean, Diagnostic, Diagnostics};
pub use types::*;

pub use coalmine_analysis::{default_alarms, AlarmSpec};
