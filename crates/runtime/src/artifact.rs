//! What a build made of a revision, in the one shape every runtime reads: the build's output
//! folder (local tasks start in it) and the container images the build named in its
//! `imagedefinitions.json`, as CodePipeline's ECS deploy action reads them (ECS runs those).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file a build writes to name its images: `[{"name": <container>, "imageUri": <image>}]`.
pub const IMAGE_DEFINITIONS: &str = "imagedefinitions.json";

/// A build's output that a runtime cannot use; says where and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}; {fix}")]
pub struct ArtifactError {
    pub path: PathBuf,
    pub reason: String,
    pub fix: String,
}

/// A built revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The build's output folder on this machine.
    pub dir: PathBuf,
    /// Container name -> image, from the folder's `imagedefinitions.json`; empty when the
    /// build wrote none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
}

impl Artifact {
    /// A folder and no images (a build for the local runtime).
    pub fn folder(dir: impl Into<PathBuf>) -> Artifact {
        Artifact { dir: dir.into(), images: BTreeMap::new() }
    }

    /// A build's output folder as the runtimes will see it: its `imagedefinitions.json`, when
    /// the build wrote one, read and checked.
    pub fn read(dir: &Path) -> Result<Artifact, ArtifactError> {
        let path = dir.join(IMAGE_DEFINITIONS);
        let images = match std::fs::read_to_string(&path) {
            Ok(text) => parse_image_definitions(&text, &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(ArtifactError { path, reason: format!("cannot read it ({e})"), fix: "check the file's permissions".into() });
            }
        };
        Ok(Artifact { dir: dir.to_path_buf(), images })
    }

    /// The image of `container`.
    pub fn image(&self, container: &str) -> Result<&str, ArtifactError> {
        if let Some(image) = self.images.get(container) {
            return Ok(image);
        }
        let path = self.dir.join(IMAGE_DEFINITIONS);
        if self.images.is_empty() {
            return Err(ArtifactError {
                path,
                reason: "the build named no image (it wrote no imagedefinitions.json, or an empty one)".into(),
                fix: format!("the build must write imagedefinitions.json into its output folder with an entry for the container `{container}`, as the guidance's buildspec does"),
            });
        }
        let have = self.images.keys().cloned().collect::<Vec<_>>().join(", ");
        Err(ArtifactError {
            path,
            reason: format!("no entry for the app's container `{container}` (it names {have})"),
            fix: "write the container's name as [runtime] container says (default: the app's name), or set [runtime] container".into(),
        })
    }
}

#[derive(Deserialize)]
struct ImageDefinition {
    name: Option<String>,
    #[serde(rename = "imageUri")]
    image_uri: Option<String>,
}

/// The images of an `imagedefinitions.json` (`[{"name": ..., "imageUri": ...}]`), by container.
/// `path` is for the messages.
pub fn parse_image_definitions(text: &str, path: &Path) -> Result<BTreeMap<String, String>, ArtifactError> {
    let err = |reason: String, fix: &str| ArtifactError { path: path.to_path_buf(), reason, fix: fix.to_string() };
    let shape = "write it as the guidance's buildspec does: printf '[{\"name\":\"%s\",\"imageUri\":\"%s\"}]' <container> <image> > imagedefinitions.json";
    let entries: Vec<ImageDefinition> = serde_json::from_str(text).map_err(|e| {
        err(format!("not a JSON list of {{\"name\", \"imageUri\"}} objects (line {}, column {}: {e})", e.line(), e.column()), shape)
    })?;
    let mut images = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(name) = entry.name.as_deref().filter(|n| !n.trim().is_empty()) else {
            return Err(err(format!("entry {i} has no \"name\""), shape));
        };
        let Some(uri) = entry.image_uri.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Err(err(format!("entry {i} (`{name}`) has no \"imageUri\""), shape));
        };
        if uri.chars().any(char::is_whitespace) {
            return Err(err(format!("entry {i} (`{name}`): `{uri}` is not an image reference"), shape));
        }
        if images.insert(name.to_string(), uri.to_string()).is_some() {
            return Err(err(format!("container `{name}` is named twice"), "keep one entry per container"));
        }
    }
    Ok(images)
}
