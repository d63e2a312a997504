//! `crdgen`: writes `crds/<plural>.weft.dev.yaml` for every kind, or with `--check` fails when
//! the committed manifests differ from the generated ones.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: crdgen [--check] [--dir DIR]   (DIR defaults to crds/ at the workspace root)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return usage(),
            },
            "-h" | "--help" => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    if check {
        match api::crdgen::check(&dir) {
            Ok(drift) if drift.is_empty() => {
                println!("crds/ is up to date ({})", dir.display());
                ExitCode::SUCCESS
            }
            Ok(drift) => {
                eprintln!(
                    "crds/ differs from the types in crates/api ({} file(s)):",
                    drift.len()
                );
                for d in &drift {
                    eprintln!("  {d}");
                }
                eprintln!("run `cargo run -p api --bin crdgen` and commit crds/");
                ExitCode::FAILURE
            }
            Err(e) => report(e),
        }
    } else {
        match api::crdgen::write_all(&dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => report(e),
        }
    }
}

fn report(e: api::Error) -> ExitCode {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("crdgen: {msg}");
    ExitCode::FAILURE
}
