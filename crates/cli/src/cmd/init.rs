//! `coalmine init`: a commented coalmine.toml (and a buildspec.yml) for an app folder, or a new
//! repository holding the sample app.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The app's folder (default: here).
    pub dir: Option<PathBuf>,
    /// Create DIR as a new git repository holding an example app: `sample-app`.
    #[arg(long, value_name = "NAME")]
    pub example: Option<String>,
}

const BUILDSPEC_TEMPLATE: &str = r#"# buildspec.yml (CodeBuild's version 0.2 format): how coalmine builds each commit.
version: 0.2

phases:
  build:
    commands:
      # Replace with your build; put what the service runs into the artifacts below.
      - echo "building $CODEBUILD_RESOLVED_SOURCE_VERSION"

artifacts:
  files:
    - '**/*'
"#;

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if let Some(example) = &args.example {
        if example != "sample-app" {
            bail!("unknown example `{example}`: the examples are `sample-app`");
        }
        if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            bail!("{} is not empty: give a new folder, e.g. `coalmine init --example sample-app my-worker`", dir.display());
        }
        crate::sample::write(&dir, None)?;
        crate::sample::init_repo(&dir, "sample-app: an SQS worker released with coalmine")?;
        println!("created {} (a git repository holding the sample app)", dir.display());
        println!("next:\n  cd {}\n  coalmine up            # queue, services, pipeline; builds and releases the first commit", dir.display());
        println!("  coalmine send          # 100 batches of 5 messages\n  coalmine status --watch");
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&dir)?;
    let toml = dir.join("coalmine.toml");
    let app = std::fs::canonicalize(&dir)?
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "-"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "app".into());
    if toml.exists() {
        println!("{} exists; left as it is", toml.display());
    } else {
        std::fs::write(&toml, coalmine_spec::default_toml(&app))?;
        println!("wrote {} (app `{app}`, every setting with its default and what it does)", toml.display());
    }
    let buildspec = dir.join("buildspec.yml");
    if buildspec.exists() {
        println!("{} exists; left as it is", buildspec.display());
    } else {
        std::fs::write(&buildspec, BUILDSPEC_TEMPLATE)?;
        println!("wrote {}", buildspec.display());
    }
    println!("next:");
    println!("  1. set [run] command in coalmine.toml to what starts your worker, and the build in buildspec.yml");
    println!("  2. add `.coalmine/` to .gitignore, commit both files");
    println!("  3. coalmine validate && coalmine up");
    println!("  4. push commits to the branch; `coalmine status --watch`, then `coalmine approve`");
    Ok(ExitCode::SUCCESS)
}
