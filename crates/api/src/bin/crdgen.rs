//! `crdgen`: writes `<plural>.weft.dev.yaml` for every kind into crds/ and into the Helm
//! chart's charts/weft/crds/, or with `--check` fails when either committed copy differs from
//! the generated manifests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: crdgen [--check] [--dir DIR]...   (DIR defaults to crds/ and charts/weft/crds/ at the workspace root)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dirs.push(PathBuf::from(d)),
                None => return usage(),
            },
            "-h" | "--help" => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    if dirs.is_empty() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        dirs.push(PathBuf::from(format!("{root}/crds")));
        dirs.push(PathBuf::from(format!("{root}/charts/weft/crds")));
    }
    let mut code = ExitCode::SUCCESS;
    for dir in &dirs {
        let ok = if check {
            check_dir(dir)
        } else {
            write_dir(dir)
        };
        if !ok {
            code = ExitCode::FAILURE;
        }
    }
    code
}

fn check_dir(dir: &Path) -> bool {
    match api::crdgen::check(dir) {
        Ok(drift) if drift.is_empty() => {
            println!("{} is up to date", dir.display());
            true
        }
        Ok(drift) => {
            eprintln!(
                "{} differs from the types in crates/api ({} file(s)):",
                dir.display(),
                drift.len()
            );
            for d in &drift {
                eprintln!("  {d}");
            }
            eprintln!("run `cargo run -p api --bin crdgen` and commit crds/ and charts/weft/crds/");
            false
        }
        Err(e) => report(e),
    }
}

fn write_dir(dir: &Path) -> bool {
    match api::crdgen::write_all(dir) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            true
        }
        Err(e) => report(e),
    }
}

fn report(e: api::Error) -> bool {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("crdgen: {msg}");
    false
}
