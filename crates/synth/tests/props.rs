//! Properties of the template over many valid files: it is made, renders, and every reference
//! in it (`Ref`, `Fn::GetAtt`, `${...}` in `Fn::Sub`, `DependsOn`) names a resource, a
//! parameter or a pseudo parameter; every IAM action comes from `policy.rs`.

use coalmine_spec::parse;
use coalmine_synth::{aws_template, policy, Options, Template, Vpc};
use proptest::prelude::*;
use serde_json::Value;

const PSEUDO: &[&str] = &["AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix", "AWS::StackName"];

fn known(t: &Template, name: &str) -> bool {
    t.resources.contains_key(name) || t.parameters.contains_key(name) || PSEUDO.contains(&name)
}

/// Every name a value refers to.
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                match (k.as_str(), inner) {
                    ("Ref", Value::String(name)) => out.push(name.clone()),
                    ("Fn::GetAtt", Value::Array(parts)) => out.push(parts[0].as_str().unwrap_or_default().to_string()),
                    ("Fn::Sub", Value::String(text)) => {
                        for piece in text.split("${").skip(1) {
                            let name = piece.split('}').next().unwrap_or_default();
                            out.push(name.split('.').next().unwrap_or_default().to_string());
                        }
                    }
                    _ => references(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| references(i, out)),
        _ => {}
    }
}

const SIZES: &[(u32, u32)] = &[(256, 512), (256, 2048), (512, 1024), (1024, 8192), (2048, 4096), (4096, 30720), (8192, 16384), (16384, 122880)];
const RETENTION: &[&str] = &["1d", "7d", "30d", "365d", "3653d"];

fn file() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,6})?",
        1u32..20,
        0usize..SIZES.len(),
        0usize..RETENTION.len(),
        any::<bool>(),
        1u16..65535,
        1u32..5,
        prop::option::of("[A-Z][A-Z_]{0,8}"),
    )
        .prop_map(|(app, primary, size, retention, ecs, port, receives, env)| {
            let canary = 1 + primary / 4;
            let (cpu, memory) = SIZES[size];
            let env = env.map(|k| format!("env = {{ {k} = \"v\" }}\n")).unwrap_or_default();
            let runtime = if ecs {
                format!("[runtime]\nkind = \"ecs\"\ncpu = {cpu}\nmemory = {memory}\nlog_retention = \"{}\"\nproxy_port = {port}\n", RETENTION[retention])
            } else {
                String::new()
            };
            format!(
                "app = \"{app}\"\n[source]\nrepo = \"https://example.com/{app}.git\"\n[run]\ncommand = \"./{app} --x\"\n{env}[queue]\nmax_receive_count = {receives}\n[services.primary]\ntasks = {primary}\n[services.canary]\ntasks = {canary}\n{runtime}"
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_reference_resolves(src in file(), controller in any::<bool>(), existing in any::<bool>()) {
        let spec = parse(&src, "coalmine.toml").unwrap_or_else(|d| panic!("{d}\n{src}"));
        let vpc = if existing { Vpc::Existing } else { Vpc::New };
        let t = aws_template(&spec, &Options { vpc, controller, toml_source: Some(src.clone()) }).unwrap();
        let mut names = Vec::new();
        for (name, r) in &t.resources {
            references(&r.properties, &mut names);
            for d in &r.depends_on {
                prop_assert!(t.resources.contains_key(d), "{name} depends on {d}, which is not a resource");
            }
        }
        for o in t.outputs.values() {
            references(&o.value, &mut names);
        }
        prop_assert!(names.len() > 30 && names.iter().any(|n| n == "AppImageTag"), "{names:?}");
        for name in &names {
            prop_assert!(known(&t, name), "`{name}` is referenced but is no resource or parameter\n{src}");
        }
        // Every parameter is used (cfn-lint warns otherwise).
        for p in t.parameters.keys() {
            prop_assert!(names.contains(p), "parameter {p} is not used");
        }
        let listed: Vec<&str> = policy::ALL.iter().flat_map(|l| l.iter().copied()).collect();
        for (role, action, _) in t.iam_grants() {
            prop_assert!(listed.contains(&action.as_str()), "{role} grants {action}");
        }
        let yaml = t.to_yaml().unwrap();
        prop_assert_eq!(yaml, aws_template(&spec, &Options { vpc, controller, toml_source: Some(src.clone()) }).unwrap().to_yaml().unwrap());
    }
}
