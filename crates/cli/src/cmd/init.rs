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
    #[arg(long, value_name = "NAME", conflicts_with = "aws")]
    pub example: Option<String>,
    /// For Amazon ECS and SQS: `[runtime] kind = "ecs"`, the queue in SQS, and a buildspec.yml
    /// that builds the image, pushes it to ECR and writes imagedefinitions.json (as the
    /// guidance's). Then `coalmine synth aws` makes the infrastructure.
    #[arg(long)]
    pub aws: bool,
    /// The AWS region, with --aws.
    #[arg(long, default_value = "us-east-1", requires = "aws")]
    pub region: String,
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

/// The buildspec of `init --aws`: the image, pushed to the stack's repository, named in
/// imagedefinitions.json for the app's container. One phase does it all because each phase
/// runs in its own shell here (CodeBuild keeps one).
pub fn aws_buildspec(app: &str, container: &str, region: &str) -> String {
    BUILDSPEC_AWS_TEMPLATE.replace("{app}", app).replace("{container}", container).replace("{region}", region)
}

const BUILDSPEC_AWS_TEMPLATE: &str = r#"# buildspec.yml (CodeBuild's version 0.2 format): build the app's image from the Dockerfile,
# push it to the ECR repository of `coalmine synth aws`, and name it in imagedefinitions.json,
# as the guidance's buildspec does. Needs docker and the AWS CLI, with credentials that may
# push to the repository.
version: 0.2

env:
  variables:
    AWS_DEFAULT_REGION: "{region}"
    REPOSITORY_NAME: "{app}"
    CONTAINER_NAME: "{container}"

phases:
  build:
    commands:
      - ACCOUNT_ID=$(aws sts get-caller-identity --query Account --output text)
      - REPOSITORY_URI="$ACCOUNT_ID.dkr.ecr.$AWS_DEFAULT_REGION.amazonaws.com/$REPOSITORY_NAME"
      - aws ecr get-login-password --region "$AWS_DEFAULT_REGION" | docker login --username AWS --password-stdin "${REPOSITORY_URI%%/*}"
      - IMAGE_TAG=$(echo "$CODEBUILD_RESOLVED_SOURCE_VERSION" | cut -c 1-7)
      - docker build -t "$REPOSITORY_URI:latest" -t "$REPOSITORY_URI:$IMAGE_TAG" .
      - docker push "$REPOSITORY_URI:$IMAGE_TAG"
      - docker push "$REPOSITORY_URI:latest"
      - printf '[{"name":"%s","imageUri":"%s"}]' "$CONTAINER_NAME" "$REPOSITORY_URI:$IMAGE_TAG" > imagedefinitions.json

artifacts:
  files:
    - imagedefinitions.json
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
    let region = args.region.trim();
    if args.aws && (region.is_empty() || !region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')) {
        bail!("`{region}` is not an AWS region: pass e.g. --region eu-west-1");
    }
    if toml.exists() {
        println!("{} exists; left as it is", toml.display());
    } else {
        let text = if args.aws { coalmine_spec::default_toml_aws(&app, region) } else { coalmine_spec::default_toml(&app) };
        std::fs::write(&toml, text)?;
        let what = if args.aws { format!("ECS on Fargate and Amazon SQS in {region}") } else { "every setting with its default and what it does".into() };
        println!("wrote {} (app `{app}`, {what})", toml.display());
    }
    let buildspec = dir.join("buildspec.yml");
    if buildspec.exists() {
        println!("{} exists; left as it is", buildspec.display());
    } else {
        let text = if args.aws { aws_buildspec(&app, &app, region) } else { BUILDSPEC_TEMPLATE.to_string() };
        std::fs::write(&buildspec, text)?;
        println!("wrote {}", buildspec.display());
    }
    if args.aws {
        println!("next:");
        println!("  1. a Dockerfile for the app; add `.coalmine/` to .gitignore, commit");
        println!("  2. coalmine synth aws --output stack.yml     # the infrastructure as CloudFormation");
        println!("  3. aws cloudformation deploy --region {region} --template-file stack.yml --stack-name {app} \\");
        println!("       --capabilities CAPABILITY_IAM --parameter-overrides PrimaryTaskCount=0 CanaryTaskCount=0");
        println!("  4. push the first image (the buildspec's commands), then deploy again without the overrides");
        println!("  see \"From nothing to a canary on AWS\" in coalmine's README");
        return Ok(ExitCode::SUCCESS);
    }
    println!("next:");
    println!("  1. set [run] command in coalmine.toml to what starts your worker, and the build in buildspec.yml");
    println!("  2. add `.coalmine/` to .gitignore, commit both files");
    println!("  3. coalmine validate && coalmine up");
    println!("  4. push commits to the branch; `coalmine status --watch`, then `coalmine approve`");
    Ok(ExitCode::SUCCESS)
}
