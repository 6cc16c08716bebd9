//! coalmine-synth: infrastructure derived from `coalmine.toml`.
//!
//! [`aws`] builds the CloudFormation template of `coalmine synth aws`: the guidance's runtime
//! half (queue and DLQ, ECR repository, ECS cluster, primary and canary Fargate services) wired
//! for coalmine (the proxy sidecar, the telemetry queue, least-privilege roles), optionally
//! with the controller itself as an ECS service. [`policy`] names every IAM action the template
//! grants. Pure: numbers in, a [`Template`] out; [`Template::to_yaml`] renders it.

pub mod aws;
pub mod policy;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

pub use aws::{template as aws_template, Options, Vpc};

/// Why a template cannot be made from a valid `coalmine.toml`.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// `--controller` needs a repository the controller can clone from AWS.
    #[error("the controller on ECS clones the app's repository, but [source] repo is the local folder `{0}`")]
    ControllerNeedsUrl(String),
    /// `--controller` needs the text of `coalmine.toml` to hand to the controller.
    #[error("the controller needs the text of coalmine.toml, which was not given")]
    ControllerNeedsFile,
    /// The template creates the queue in Amazon SQS; the file points the app elsewhere.
    #[error("[queue] endpoint is `{0}`, but the template creates the queue in Amazon SQS")]
    ForeignQueueEndpoint(String),
    #[error("cannot render the template as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

impl SynthError {
    /// How to fix it.
    pub fn hint(&self) -> &'static str {
        match self {
            SynthError::ControllerNeedsUrl(_) => {
                "set [source] repo in coalmine.toml to a URL the controller can reach (e.g. https://github.com/you/app.git), or leave out --controller and run the controller where the repository is"
            }
            SynthError::ControllerNeedsFile => "pass the file's text along with the parsed spec",
            SynthError::ForeignQueueEndpoint(_) => {
                "remove `endpoint` from [queue] (or set it to https://sqs.<region>.amazonaws.com): the stack's queue lives in the stack's region"
            }
            SynthError::Yaml(_) => "this is a bug in coalmine: please report it with your coalmine.toml",
        }
    }
}

/// A CloudFormation template. Keys render in this struct's order at the top and in sorted order
/// below (the maps are `BTreeMap`s), so the same input always gives the same text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    #[serde(rename = "AWSTemplateFormatVersion")]
    pub format_version: &'static str,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Parameters", skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, Value>,
    #[serde(rename = "Resources")]
    pub resources: BTreeMap<String, Resource>,
    #[serde(rename = "Outputs")]
    pub outputs: BTreeMap<String, Output>,
    /// Comment lines printed above the template.
    #[serde(skip)]
    pub header: Vec<String>,
}

/// One resource of a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "DependsOn", skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// For resources holding data: what deleting or replacing them does, said explicitly.
    #[serde(rename = "DeletionPolicy", skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<&'static str>,
    #[serde(rename = "UpdateReplacePolicy", skip_serializing_if = "Option::is_none")]
    pub update_replace_policy: Option<&'static str>,
    #[serde(rename = "Properties")]
    pub properties: Value,
}

/// One output of a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "Value")]
    pub value: Value,
}

/// Quote the values that YAML 1.1 readers take for dates (`Version: 2012-10-17`). They are
/// strings in YAML 1.2, which the serializer writes; PyYAML (cfn-lint, moto, the AWS CLI) reads
/// 1.1, and CloudFormation's own examples quote them.
fn quote_dates(yaml: &str) -> String {
    let is_date = |v: &str| {
        let b = v.as_bytes();
        b.len() == 10 && b[4] == b'-' && b[7] == b'-' && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
    };
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.lines() {
        match line.rsplit_once(": ") {
            Some((key, value)) if is_date(value) => {
                out.push_str(key);
                out.push_str(": '");
                out.push_str(value);
                out.push('\'');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Template {
    /// The template as YAML (CloudFormation's long-form intrinsics: `Ref`, `Fn::GetAtt`,
    /// `Fn::Sub`), after the header's comment lines.
    pub fn to_yaml(&self) -> Result<String, SynthError> {
        let mut out = String::new();
        for line in &self.header {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&quote_dates(&serde_yaml_ng::to_string(self)?));
        Ok(out)
    }

    /// Every `(action, resource)` pair the template's IAM roles allow, resources as rendered
    /// JSON (a string, or an intrinsic function).
    pub fn iam_grants(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (name, resource) in &self.resources {
            if resource.kind != "AWS::IAM::Role" {
                continue;
            }
            for policy in resource.properties["Policies"].as_array().into_iter().flatten() {
                for statement in policy["PolicyDocument"]["Statement"].as_array().into_iter().flatten() {
                    let resources: Vec<String> = match &statement["Resource"] {
                        Value::Array(items) => items.iter().map(Value::to_string).collect(),
                        other => vec![other.to_string()],
                    };
                    for action in statement["Action"].as_array().into_iter().flatten() {
                        for r in &resources {
                            out.push((name.clone(), action.as_str().unwrap_or_default().to_string(), r.clone()));
                        }
                    }
                }
            }
        }
        out
    }
}
