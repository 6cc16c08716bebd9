//! The buildspec runner on real bash: CodeBuild's phase semantics, variables, artifacts, timeout.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use coalmine_pipeline::build::{BuildRequest, Builder, BuildspecBuilder, Cancel};
use coalmine_runtime::Artifact;

fn request(dir: &Path, buildspec: &str, timeout: Duration) -> BuildRequest {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("buildspec.yml"), buildspec).unwrap();
    BuildRequest {
        app: "app".into(),
        execution_id: 7,
        build_number: 42,
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: "main".into(),
        revision: "0123456789ab".into(),
        buildspec: src.join("buildspec.yml"),
        src_dir: src,
        log_path: dir.join("build.log"),
        artifact_dir: dir.join("artifacts/0123456789ab"),
        timeout,
        env: BTreeMap::from([("FROM_COALMINE".to_string(), "yes".to_string())]),
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("build.log")).unwrap()
}

#[test]
fn variables_phases_and_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = r#"version: 0.2
env:
  variables:
    GREETING: hello
phases:
  install:
    commands:
      - echo "install $CODEBUILD_BUILD_NUMBER"
  build:
    commands:
      - mkdir -p out/sub
      - echo "$CODEBUILD_RESOLVED_SOURCE_VERSION $GREETING $FROM_COALMINE $CODEBUILD_BUILD_ID" > out/sub/info.txt
      - echo "$CODEBUILD_SRC_DIR" > out/srcdir.txt
    finally:
      - echo "finally ran"
artifacts:
  base-directory: out
  files:
    - '**/*'
"#;
    let req = request(tmp.path(), spec, Duration::from_secs(60));
    let built = BuildspecBuilder.build(&req, &Cancel::default()).expect("build succeeds");
    assert!(built.summary.contains("2 artifact file(s)"), "{built:?}");
    assert_eq!(built.artifact, Artifact::folder(&req.artifact_dir), "a folder and no image");
    let info = std::fs::read_to_string(req.artifact_dir.join("sub/info.txt")).unwrap();
    assert_eq!(info.trim(), "0123456789abcdef0123456789abcdef01234567 hello yes app:7");
    let srcdir = std::fs::read_to_string(req.artifact_dir.join("srcdir.txt")).unwrap();
    assert_eq!(srcdir.trim(), req.src_dir.to_string_lossy());
    let l = log(tmp.path());
    assert!(l.contains("install 42") && l.contains("finally ran"), "{l}");
}

/// The images a build names in its imagedefinitions.json are part of what it made; a malformed
/// file fails the build, with the file and the fix, instead of the deployment later.
#[test]
fn image_definitions_are_part_of_the_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = |json: &str| {
        format!(
            "version: 0.2\nphases:\n  build:\n    commands:\n      - printf '%s' '{json}' > imagedefinitions.json\nartifacts:\n  files:\n    - imagedefinitions.json\n"
        )
    };
    let req = request(tmp.path(), &spec(r#"[{"name":"app","imageUri":"repo/app:7"}]"#), Duration::from_secs(60));
    let built = BuildspecBuilder.build(&req, &Cancel::default()).expect("build succeeds");
    assert_eq!(built.artifact.image("app").unwrap(), "repo/app:7", "{built:?}");
    assert_eq!(built.artifact.dir, req.artifact_dir);

    let bad = tempfile::tempdir().unwrap();
    let req = request(bad.path(), &spec(r#"[{"name":"app"}]"#), Duration::from_secs(60));
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("imagedefinitions.json") && err.contains("has no \"imageUri\"") && err.contains("printf"), "{err}");
    assert!(log(bad.path()).contains("has no \"imageUri\""), "the build log says it too");
}

#[test]
fn post_build_runs_after_a_failed_build_and_the_phase_stops_at_its_first_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = r#"version: 0.2
phases:
  build:
    commands:
      - echo before
      - exit 4
      - echo never
  post_build:
    commands:
      - echo "post_build succeeding=$CODEBUILD_BUILD_SUCCEEDING"
artifacts:
  files:
    - buildspec.yml
"#;
    let req = request(tmp.path(), spec, Duration::from_secs(60));
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("phase build failed") && err.contains("status 4"), "{err}");
    let l = log(tmp.path());
    assert!(l.contains("before") && !l.contains("\nnever"), "{l}");
    assert!(l.contains("post_build succeeding=0"), "{l}");
    assert!(!req.artifact_dir.exists(), "no artifacts from a failed build");
}

#[test]
fn a_failed_pre_build_ends_the_build_unless_on_failure_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let abort = "version: 0.2\nphases:\n  pre_build:\n    commands:\n      - 'false'\n  build:\n    commands:\n      - echo built\nartifacts:\n  files:\n    - buildspec.yml\n";
    let req = request(tmp.path(), abort, Duration::from_secs(60));
    assert!(BuildspecBuilder.build(&req, &Cancel::default()).is_err());
    assert!(!log(tmp.path()).contains("\nbuilt"));

    let tmp = tempfile::tempdir().unwrap();
    let cont = "version: 0.2\nphases:\n  pre_build:\n    on-failure: CONTINUE\n    commands:\n      - 'false'\n  build:\n    commands:\n      - echo \"built succeeding=$CODEBUILD_BUILD_SUCCEEDING\"\nartifacts:\n  files:\n    - buildspec.yml\n";
    let req = request(tmp.path(), cont, Duration::from_secs(60));
    BuildspecBuilder.build(&req, &Cancel::default()).expect("CONTINUE goes on");
    assert!(log(tmp.path()).contains("built succeeding=0"));
}

#[test]
fn timeout_kills_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = "version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 30\nartifacts:\n  files:\n    - buildspec.yml\n";
    let req = request(tmp.path(), spec, Duration::from_millis(500));
    let t = Instant::now();
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(25), "killed well before the 30 s command ended, took {:?}", t.elapsed());
}

#[test]
fn artifacts_that_match_nothing_fail_with_the_pattern_named() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo ok\nartifacts:\n  files:\n    - target/release/app\n";
    let req = request(tmp.path(), spec, Duration::from_secs(60));
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("target/release/app") && err.contains("matched no file"), "{err}");
}

#[test]
fn artifacts_outside_the_checkout_are_refused_and_nothing_outside_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("precious.txt");
    std::fs::write(&outside, "keep me").unwrap();
    // A link inside the checkout to a file outside: the pattern is fine, the file is not.
    let spec = format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p out && ln -s {} out/link.txt && echo hi > out/ok.txt\nartifacts:\n  files:\n    - 'out/*'\n",
        outside.display()
    );
    let req = request(tmp.path(), &spec, Duration::from_secs(60));
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("outside the checkout") && err.contains("link.txt"), "{err}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    assert!(!req.artifact_dir.exists(), "no artifact folder from a refused build");

    // An absolute pattern (the file would be copied onto itself and truncated): refused
    // before anything is copied.
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("precious.txt");
    std::fs::write(&outside, "keep me").unwrap();
    let spec = format!("version: 0.2\nphases:\n  build:\n    commands: [true]\nartifacts:\n  files:\n    - {}\n", outside.display());
    let req = request(tmp.path(), &spec, Duration::from_secs(60));
    let err = BuildspecBuilder.build(&req, &Cancel::default()).unwrap_err().to_string();
    assert!(err.contains("absolute path"), "{err}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
}
