use proptest::prelude::*;
use std::time::Duration;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any text: a spec or diagnostics, never a panic; every diagnostic points inside the text.
    #[test]
    fn toml_parser_never_panics(src in "(app|run|command|tasks|steps|alarms|kind|\\[|\\]|=|\"|\\n| |[a-z0-9]|é){0,120}") {
        match coalmine_spec::parse(&src, "coalmine.toml") {
            Ok(_) => {}
            Err(d) => {
                prop_assert!(!d.is_empty());
                let lines = src.lines().count().max(1);
                for x in &d {
                    prop_assert!(x.line <= lines + 1, "{x:?}");
                    let _ = x.to_string();
                }
            }
        }
    }

    #[test]
    fn buildspec_parser_never_panics(src in "(version|phases|build|commands|env|:|-| |\\n|[a-z0-9]|'){0,120}") {
        if let Err(d) = coalmine_spec::parse_buildspec(&src, "buildspec.yml") {
            prop_assert!(!d.is_empty());
            let _ = d.to_string();
        }
    }

    /// Mutating one default value in range keeps the file valid and reads the value back.
    #[test]
    fn task_counts_read_back(primary in 1u32..50, canary_share in 0.0f64..1.0) {
        let canary = ((primary as f64 * canary_share) as u32).max(1);
        let text = coalmine_spec::default_toml("a")
            .replace("[services.primary]\ntasks = 3", &format!("[services.primary]\ntasks = {primary}"))
            .replace("tasks = 1\n", &format!("tasks = {canary}\n"));
        let s = coalmine_spec::parse(&text, "coalmine.toml").unwrap();
        prop_assert_eq!(s.services.primary.tasks, primary);
        prop_assert_eq!(s.services.canary.tasks, canary);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..10_000_000_000) {
        let d = Duration::from_millis(ms);
        let text = coalmine_spec::format_duration(d);
        prop_assert_eq!(coalmine_spec::parse_duration(&text).unwrap(), d);
    }
}
