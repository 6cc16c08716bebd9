//! `coalmine validate`: check coalmine.toml (and the buildspec beside it) without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The app's coalmine.toml.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let path = crate::workspace::spec_path(args.file.as_deref());
    let mut ok = true;
    match coalmine_spec::load(&path) {
        Ok(spec) => {
            let runtime = match spec.runtime.ecs() {
                Some(ecs) => format!("runtime ecs: cluster `{}`, services `{}` and `{}`", ecs.cluster, ecs.primary_service, ecs.canary_service),
                None => "runtime local".to_string(),
            };
            println!("{}: valid (app `{}`, {} step(s), {} alarm(s), {runtime})", path.display(), spec.app, spec.steps.len(), spec.alarms.len());
            match coalmine_pipeline::source::resolve_branch(&spec.source.repo.location(), spec.source.branch.as_deref()) {
                Ok(branch) => println!("{}: watching branch `{branch}`", spec.source.repo.location()),
                Err(e) => {
                    let e = match e {
                        coalmine_pipeline::PipelineError::Source(m) => m,
                        e => e.to_string(),
                    };
                    eprintln!("{}: {e}", path.display());
                    ok = false;
                }
            }
            let buildspec = spec.root.join(&spec.build.buildspec);
            if buildspec.exists() {
                match coalmine_spec::load_buildspec(&buildspec) {
                    Ok(_) => println!("{}: valid", buildspec.display()),
                    Err(d) => {
                        eprintln!("{d}");
                        ok = false;
                    }
                }
            }
        }
        Err(d) => {
            eprintln!("{d}");
            ok = false;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
