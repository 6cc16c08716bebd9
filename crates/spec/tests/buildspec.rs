use coalmine_spec::*;

fn errors(src: &str) -> Diagnostics {
    match parse_buildspec(src, "buildspec.yml") {
        Ok(s) => panic!("expected diagnostics, parsed {s:#?}"),
        Err(d) => d,
    }
}

fn one<'a>(d: &'a Diagnostics, path: &str) -> &'a Diagnostic {
    let found: Vec<_> = d.iter().filter(|x| x.path == path).collect();
    assert_eq!(found.len(), 1, "expected one diagnostic at {path}, got:\n{d}");
    found[0]
}

#[test]
fn the_guidance_style_buildspec() {
    let src = r#"version: 0.2

env:
  variables:
    CARGO_TERM_COLOR: never
    RETRIES: 3
    VERBOSE: true

phases:
  install:
    commands:
      - echo installing
  pre_build:
    commands:
      - 'echo "pre: $CODEBUILD_RESOLVED_SOURCE_VERSION"' 
  build:
    on-failure: CONTINUE
    commands:
      - cargo build --release
      - cp target/release/sample-app out/
    finally:
      - echo done
  post_build:
    commands: echo single
artifacts:
  files:
    - sample-app
    - 'config/**/*'
  base-directory: out
  discard-paths: yes
"#;
    let b = parse_buildspec(src, "buildspec.yml").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        b.env_variables,
        vec![
            ("CARGO_TERM_COLOR".to_string(), "never".to_string()),
            ("RETRIES".to_string(), "3".to_string()),
            ("VERBOSE".to_string(), "true".to_string()),
        ]
    );
    assert_eq!(b.phases.install.as_ref().unwrap().commands, vec!["echo installing"]);
    assert_eq!(b.phases.pre_build.as_ref().unwrap().commands, vec!["echo \"pre: $CODEBUILD_RESOLVED_SOURCE_VERSION\""]);
    let build = b.phases.build.as_ref().unwrap();
    assert_eq!(build.commands.len(), 2);
    assert_eq!(build.finally, vec!["echo done"]);
    assert_eq!(build.on_failure, OnFailure::Continue);
    let post = b.phases.post_build.as_ref().unwrap();
    assert_eq!(post.commands, vec!["echo single"]);
    assert_eq!(post.on_failure, OnFailure::Abort);
    let names: Vec<&str> = b.phases.in_order().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["install", "pre_build", "build", "post_build"]);
    let a = b.artifacts.unwrap();
    assert_eq!(a.files, vec!["sample-app", "config/**/*"]);
    assert_eq!(a.base_directory.as_deref(), Some("out"));
    assert!(a.discard_paths);
}

#[test]
fn version_must_be_0_2() {
    let d = errors("version: 0.1\nphases:\n  build:\n    commands:\n      - make\n");
    let e = one(&d, "version");
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.hint.as_deref().unwrap().contains("version: 0.2"));
    let d = errors("phases:\n  build:\n    commands:\n      - make\n");
    assert!(d.0[0].message.contains("no `version`"));
    // The string form is accepted too.
    assert!(parse_buildspec("version: \"0.2\"\nphases:\n  build:\n    commands: [make]\n", "b.yml").is_ok());
}

#[test]
fn unsupported_keys_are_reported_by_name_and_place() {
    let src = "version: 0.2\nrun-as: root\nenv:\n  variables:\n    A: b\n  parameter-store:\n    TOKEN: /x/y\n  secrets-manager:\n    K: s:k\n  exported-variables:\n    - A\nphases:\n  install:\n    runtime-versions:\n      nodejs: 18\n    commands:\n      - npm ci\n  build:\n    commands:\n      - make\nreports:\n  r:\n    files: [x]\ncache:\n  paths: [x]\n";
    let d = errors(src);
    for (path, line, col) in [
        ("run-as", 2, 1),
        ("env.parameter-store", 6, 3),
        ("env.secrets-manager", 8, 3),
        ("env.exported-variables", 10, 3),
        ("phases.install.runtime-versions", 14, 5),
        ("reports", 21, 1),
        ("cache", 24, 1),
    ] {
        let e = one(&d, path);
        assert_eq!((e.line, e.column), (line, col), "{e}");
        assert!(e.message.contains(&format!("`{path}` is not supported")), "{e}");
    }
    assert_eq!(d.len(), 7);
    let text = d.to_string();
    assert!(text.contains(" --> buildspec.yml:6:3\n  |\n6 |   parameter-store:\n  |   ^^^^^^^^^^^^^^^ env.parameter-store"), "{text}");
}

#[test]
fn unknown_keys_suggest_near_misses() {
    let d = errors("version: 0.2\nphases:\n  biuld:\n    commands:\n      - make\n  build:\n    comands:\n      - make\n    on-failure: RETRY\n");
    let e = one(&d, "phases.biuld");
    assert_eq!((e.line, e.column), (3, 3));
    assert_eq!(e.hint.as_deref(), Some("did you mean `build`?"));
    let e = one(&d, "phases.build.comands");
    assert_eq!((e.line, e.column), (7, 5));
    assert_eq!(e.hint.as_deref(), Some("did you mean `commands`?"));
    let e = one(&d, "phases.build.on-failure");
    assert!(e.hint.as_deref().unwrap().contains("ABORT"));
}

#[test]
fn a_command_yaml_reads_as_a_mapping_is_explained() {
    let d = errors("version: 0.2\nphases:\n  build:\n    commands:\n      - echo a: b\n");
    let e = one(&d, "phases.build.commands");
    assert!(e.message.contains("is a mapping, not a string"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("quote"));
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let d = errors("version: 0.2\nphases:\n  build:\n    commands:\n      - make\n     - bad indent\n");
    assert_eq!(d.len(), 1);
    assert!(d.0[0].line >= 5, "{}", d);
}

#[test]
fn artifacts_need_files_and_yes_no() {
    let d = errors("version: 0.2\nphases:\n  build:\n    commands: [make]\nartifacts:\n  discard-paths: maybe\n  secondary-artifacts:\n    x: {}\n");
    assert!(one(&d, "artifacts.discard-paths").hint.as_deref().unwrap().contains("yes"));
    assert!(one(&d, "artifacts.secondary-artifacts").message.contains("not supported"));
    assert!(one(&d, "artifacts").message.contains("no `files`"));
}

#[test]
fn no_command_at_all() {
    let d = errors("version: 0.2\n");
    assert!(d.0[0].message.contains("runs no command"));
}

#[test]
fn load_buildspec_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("buildspec.yml");
    std::fs::write(&p, "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n").unwrap();
    assert_eq!(load_buildspec(&p).unwrap().phases.build.unwrap().commands, vec!["make"]);
    let e = load_buildspec(&dir.path().join("missing.yml")).unwrap_err();
    assert!(e.0[0].message.contains("cannot read"));
}

#[test]
fn artifacts_may_not_leave_the_build_folder() {
    let src = "version: 0.2\nphases:\n  build:\n    commands: [make]\nartifacts:\n  base-directory: ../elsewhere\n  files:\n    - out/app\n    - /etc/hostname\n    - 'lib/../../secret'\n";
    let d = errors(src);
    let base = one(&d, "artifacts.base-directory");
    assert!(base.message.contains("`..`"), "{base:?}");
    assert_eq!(base.line, 6);
    let files: Vec<_> = d.iter().filter(|x| x.path == "artifacts.files").collect();
    assert_eq!(files.len(), 2, "{d}");
    assert!(files[0].message.contains("/etc/hostname") && files[0].message.contains("absolute"), "{:?}", files[0]);
    assert_eq!((files[0].line, files[0].column), (9, 7), "the item itself");
    assert!(files[1].message.contains("`..`") && files[1].line == 10, "{:?}", files[1]);
    assert!(files[0].hint.as_deref().unwrap().contains("relative"));
    assert!(leaves_build_folder("out/**/*").is_none());
    assert!(leaves_build_folder("~/x").is_some());
}

#[test]
fn yaml_errors_say_where_and_how_to_fix() {
    // a key twice in one mapping: the second is reported, naming the first's line
    let d = errors("version: 0.2\nphases:\n  build:\n    commands:\n      - make\n  build:\n    commands: [test]\n");
    assert_eq!(d.len(), 1, "{d}");
    assert_eq!((d.0[0].line, d.0[0].column), (6, 3), "{d}");
    assert!(d.0[0].message.contains("`build` appears twice") && d.0[0].message.contains("line 3"), "{d}");
    // anchors are refused where they are
    let d = errors("version: 0.2\nphases:\n  build:\n    commands: &cmds\n      - make\n  post_build:\n    commands: *cmds\n");
    assert!((4..=5).contains(&d.0[0].line), "at the anchored value: {d}");
    assert!(d.0[0].message.contains("anchors") && d.0[0].hint.as_deref().unwrap().contains("in full"), "{d}");
    // a syntax error: its line, and what to check
    let d = errors("version: 0.2\nphases:\n  build:\n    commands:\n      - make\n     bad: [\n");
    assert!(d.0[0].line >= 6, "{d}");
    assert!(d.0[0].hint.as_deref().unwrap().contains("YAML syntax"), "{d}");
    // a value written out as it is: numbers and booleans keep their spelling
    let b = parse_buildspec("version: 0.2\nenv:\n  variables:\n    RATE: 1.50\n    ON: yes\nphases:\n  build:\n    commands: [make]\n", "b.yml").unwrap();
    assert_eq!(b.env_variables, vec![("RATE".to_string(), "1.50".to_string()), ("ON".to_string(), "yes".to_string())]);
}
