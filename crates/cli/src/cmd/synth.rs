//! `coalmine synth aws`: the app's AWS infrastructure as a CloudFormation template, derived
//! from coalmine.toml.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use coalmine_synth::{Options, Vpc};

#[derive(clap::Subcommand, Debug)]
pub enum SynthCommand {
    /// A CloudFormation template (YAML) of the app's infrastructure on AWS, from coalmine.toml.
    ///
    /// The queue and its DLQ (the file's settings: the guidance's visibility 300 s, dead letter
    /// after 1 receive, DLQ retention 60 min), the telemetry queue the proxies report to, an ECR
    /// repository, an ECS cluster, one task definition (the app's container and the coalmine
    /// proxy sidecar, logs in CloudWatch Logs), the primary and canary Fargate services
    /// (task counts from [services], deployment circuit breaker with rollback), and roles that
    /// allow exactly what the tasks do. Deploy it with `aws cloudformation deploy`.
    #[command(after_help = "Examples:\n  coalmine synth aws --output stack.yml\n  coalmine synth aws --vpc existing --controller > stack.yml\n  aws cloudformation deploy --template-file stack.yml --stack-name my-app --capabilities CAPABILITY_IAM")]
    Aws(AwsArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcArg {
    /// A new VPC with two public subnets, as the guidance makes.
    New,
    /// Your subnets and security groups, as stack parameters.
    Existing,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct AwsArgs {
    /// The app's coalmine.toml.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Write the template to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also run the coalmine controller on ECS: a one-task service, `.coalmine/` on EFS, its
    /// own least-privilege role. [source] repo must be a URL it can clone.
    #[arg(long)]
    pub controller: bool,
    /// Where the tasks' network comes from.
    #[arg(long, value_enum, default_value_t = VpcArg::New)]
    pub vpc: VpcArg,
    /// The template's format (CloudFormation reads both).
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
}

pub fn run(command: SynthCommand) -> anyhow::Result<ExitCode> {
    match command {
        SynthCommand::Aws(args) => aws(args),
    }
}

fn aws(args: AwsArgs) -> anyhow::Result<ExitCode> {
    let spec = crate::workspace::load_spec(args.file.as_deref())?;
    let path = crate::workspace::spec_path(args.file.as_deref());
    let toml_source = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let options = Options {
        vpc: match args.vpc {
            VpcArg::New => Vpc::New,
            VpcArg::Existing => Vpc::Existing,
        },
        controller: args.controller,
        toml_source: Some(toml_source),
    };
    let template = coalmine_synth::aws_template(&spec, &options).map_err(|e| anyhow!("{e}\n  = help: {}", e.hint()))?;
    if spec.runtime.ecs().is_none() {
        eprintln!(
            "note: {} has no `[runtime] kind = \"ecs\"`; the template uses the ECS defaults (cluster `{app}`, services `{app}` and `{app}-canary`). `coalmine init --aws` writes them into a new file.",
            path.display(),
            app = spec.app
        );
    }
    let text = match args.format {
        Format::Yaml => template.to_yaml()?,
        Format::Json => serde_json::to_string_pretty(&template)? + "\n",
    };
    match &args.output {
        None => std::io::stdout().write_all(text.as_bytes())?,
        Some(file) => {
            std::fs::write(file, &text).with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!("wrote {} ({} resources, {} parameters)", file.display(), template.resources.len(), template.parameters.len());
            eprintln!("next (see \"From nothing to a canary on AWS\" in coalmine's README):");
            let existing = if args.vpc == VpcArg::Existing {
                " Subnets=subnet-...,subnet-... SecurityGroups=sg-...".to_string() + if args.controller { " VpcId=vpc-..." } else { "" }
            } else {
                String::new()
            };
            // The stack's region is where the queue is: the file's.
            let region = spec.runtime.ecs().map(|e| e.region.as_str()).unwrap_or(spec.queue.region.as_str());
            eprintln!(
                "  aws cloudformation deploy --region {region} --template-file {} --stack-name {} --capabilities CAPABILITY_IAM \\\n    --parameter-overrides PrimaryTaskCount=0 CanaryTaskCount=0{existing}",
                file.display(),
                spec.app
            );
            eprintln!("  aws cloudformation describe-stacks --region {region} --stack-name {} --query 'Stacks[0].Outputs'", spec.app);
        }
    }
    Ok(ExitCode::SUCCESS)
}
