//! coalmine-spec: `coalmine.toml` and `buildspec.yml` — types, parsing, validation, diagnostics.
//!
//! Pure: no I/O beyond reading the file given to [`load`] / [`load_buildspec`].
//! Every problem found is a [`Diagnostic`] with file, line, column, field path, message and
//! hint; [`Diagnostics`] renders them as rustc does.

mod app;
mod buildspec;
mod diag;
mod template;
mod types;

pub use app::{load, parse};
pub use buildspec::{leaves_build_folder, load_buildspec, parse_buildspec, Artifacts, Buildspec, OnFailure, Phase, Phases};
pub use diag::{did_you_mean, Diagnostic, Diagnostics};
pub use template::{default_toml, default_toml_aws};
pub use types::*;

/// The name of coalmine's proxy sidecar container in an ECS task definition.
pub const PROXY_CONTAINER: &str = "coalmine-proxy";

pub use coalmine_analysis::duration::{format as format_duration, parse as parse_duration};
pub use coalmine_analysis::{default_alarms, AlarmSpec};
