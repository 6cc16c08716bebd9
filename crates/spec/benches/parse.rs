//! Prints how long parsing takes. `cargo bench -p coalmine-spec`.

use std::time::Instant;

fn main() {
    let toml = coalmine_spec::default_toml("sample-app");
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(coalmine_spec::parse(std::hint::black_box(&toml), "coalmine.toml").unwrap());
    }
    println!("parse default coalmine.toml ({} bytes): {:?} per parse", toml.len(), t.elapsed() / n);

    let bad = format!("{toml}\n[[alarms]]\nkind = \"dlq-dept\"\n");
    let t = Instant::now();
    for _ in 0..n {
        let d = coalmine_spec::parse(std::hint::black_box(&bad), "coalmine.toml").unwrap_err();
        std::hint::black_box(d.to_string());
    }
    println!("parse + render diagnostics of an invalid coalmine.toml: {:?} per parse", t.elapsed() / n);

    let yml = "version: 0.2\nenv:\n  variables:\n    A: b\nphases:\n  build:\n    commands:\n      - cargo build --release\n      - cp target/release/app out/\nartifacts:\n  files:\n    - '**/*'\n  base-directory: out\n";
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(coalmine_spec::parse_buildspec(std::hint::black_box(yml), "buildspec.yml").unwrap());
    }
    println!("parse buildspec.yml ({} bytes): {:?} per parse", yml.len(), t.elapsed() / n);
}
