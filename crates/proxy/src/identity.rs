//! Which task the proxy stands beside: service, revision and task id. From coalmine's
//! environment for local tasks (`COALMINE_SERVICE`, `COALMINE_REVISION`, `COALMINE_TASK`), or
//! from the ECS task metadata endpoint version 4 (`ECS_CONTAINER_METADATA_URI_V4`) on ECS.

use std::collections::HashMap;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;

/// Docker label (ECS `dockerLabels`) naming the coalmine service of a task's containers.
pub const LABEL_SERVICE: &str = "coalmine.service";
/// Docker label naming the revision (the commit) the task runs.
pub const LABEL_REVISION: &str = "coalmine.revision";

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub revision: String,
    pub task: String,
    /// `env` or `ecs`.
    pub source: &'static str,
    /// The ECS task ARN, on ECS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_arn: Option<String>,
}

/// Values given on the command line or in the environment; any of them overrides what the ECS
/// metadata says.
#[derive(Clone, Debug, Default)]
pub struct Given {
    pub service: Option<String>,
    pub revision: Option<String>,
    pub task: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskMetadata {
    #[serde(rename = "TaskARN", default)]
    task_arn: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: HashMap<String, String>,
    /// `NORMAL` for the task definition's containers; ECS's own (the `CNI_PAUSE` container of
    /// awsvpc tasks on EC2) have other types.
    #[serde(rename = "Type", default)]
    kind: Option<String>,
}

/// The tag of an image reference (`repo/name:tag`), if it has one (a digest is not a tag).
fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    (!tag.is_empty() && !image.contains('@')).then_some(tag)
}

/// Resolve the identity: all three given → `env`; otherwise the ECS metadata fills the gaps.
pub async fn resolve(given: Given, metadata_uri: Option<&str>) -> Result<Identity, ProxyError> {
    if let (Some(service), Some(revision), Some(task)) = (&given.service, &given.revision, &given.task) {
        return Ok(Identity { service: service.clone(), revision: revision.clone(), task: task.clone(), source: "env", task_arn: None });
    }
    let Some(uri) = metadata_uri.filter(|u| !u.is_empty()) else {
        let missing: Vec<&str> = [("COALMINE_SERVICE", &given.service), ("COALMINE_REVISION", &given.revision), ("COALMINE_TASK", &given.task)]
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        return Err(ProxyError::Identity(format!(
            "{} not set and ECS_CONTAINER_METADATA_URI_V4 is not set either; set them (or --service, --revision, --task), or run on ECS",
            missing.join(", ")
        )));
    };
    let uri = uri.trim_end_matches('/');
    let own: ContainerMetadata = get_json(uri).await?;
    let task: TaskMetadata = get_json(&format!("{uri}/task")).await?;
    from_metadata(given, &own.name, task)
}

fn from_metadata(given: Given, own_container: &str, task: TaskMetadata) -> Result<Identity, ProxyError> {
    let label = |key: &str| task.containers.iter().find_map(|c| c.labels.get(key).cloned());
    // The app's container: one of the task definition's, not this proxy's.
    let app = task.containers.iter().find(|c| c.name != own_container && c.kind.as_deref().is_none_or(|k| k == "NORMAL"));
    let service = given
        .service
        .or_else(|| label(LABEL_SERVICE))
        .or(task.service_name.clone().filter(|s| !s.is_empty()))
        .or_else(|| (!task.family.is_empty()).then(|| task.family.clone()));
    let revision = given
        .revision
        .or_else(|| label(LABEL_REVISION))
        .or_else(|| app.and_then(|c| image_tag(&c.image)).map(str::to_string))
        .or_else(|| (!task.family.is_empty()).then(|| format!("{}:{}", task.family, task.revision)));
    let task_id = given.task.or_else(|| task.task_arn.rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_string));
    match (service, revision, task_id) {
        (Some(service), Some(revision), Some(task_id)) => Ok(Identity {
            service,
            revision,
            task: task_id,
            source: "ecs",
            task_arn: (!task.task_arn.is_empty()).then_some(task.task_arn),
        }),
        _ => Err(ProxyError::Identity(
            "the ECS task metadata names no service, revision or task ARN; set COALMINE_SERVICE, COALMINE_REVISION and COALMINE_TASK".into(),
        )),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, ProxyError> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let what = |e: String| ProxyError::Identity(format!("reading the ECS task metadata at {url}: {e}"));
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| what(e.to_string()))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| what("no answer within 5 s".into()))?
        .map_err(|e| what(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| what(e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(what(format!("HTTP {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| what(format!("not the task metadata JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("111122223333.dkr.ecr.us-west-2.amazonaws.com/sample-app:3f2a9c1"), Some("3f2a9c1"));
        assert_eq!(image_tag("localhost:5000/app"), None);
        assert_eq!(image_tag("app@sha256:abc"), None);
    }

    #[test]
    fn labels_win_over_service_name_and_image() {
        let task: TaskMetadata = serde_json::from_str(
            r#"{"TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/default/abc","Family":"app","Revision":"4","ServiceName":"app-canary",
                "Containers":[{"Name":"~internal~ecs~pause","Image":"amazon/amazon-ecs-pause:0.1.0","Type":"CNI_PAUSE"},{"Name":"proxy","Image":"coalmine:1"},{"Name":"app","Image":"r/app:c0ffee","Labels":{"coalmine.service":"canary"}}]}"#,
        )
        .unwrap();
        let id = from_metadata(Given::default(), "proxy", task).unwrap();
        assert_eq!((id.service.as_str(), id.revision.as_str(), id.task.as_str()), ("canary", "c0ffee", "abc"));
    }
}
