//! The `crdgen` binary as the Makefile runs it: it writes the manifests, and `--check` fails
//! with a summary naming the file and line when a manifest differs.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

fn crdgen(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .args(args)
        .output()?)
}

fn scratch(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("weft-crdgen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn check_passes_on_fresh_output_and_fails_on_every_kind_of_drift() -> Result<()> {
    let dir = scratch("drift")?;
    let d = dir.to_str().unwrap_or_default();
    let out = crdgen(&["--dir", d])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(
        names,
        [
            "accesscontrollists.weft.dev.yaml",
            "virtualbridges.weft.dev.yaml",
            "virtualloadbalancers.weft.dev.yaml",
            "virtualrouters.weft.dev.yaml",
        ]
    );
    assert!(crdgen(&["--check", "--dir", d])?.status.success());

    // An edited schema: the summary names the file and the first differing line.
    let vbr = dir.join("virtualbridges.weft.dev.yaml");
    let text = std::fs::read_to_string(&vbr)?;
    std::fs::write(&vbr, text.replace("maximum: 9000.0", "maximum: 9600.0"))?;
    let out = crdgen(&["--check", "--dir", d])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("virtualbridges.weft.dev.yaml:"), "{err}");
    assert!(err.contains("maximum: 9600.0"), "{err}");

    // A missing manifest and a stray one.
    std::fs::write(&vbr, &text)?;
    std::fs::remove_file(dir.join("virtualrouters.weft.dev.yaml"))?;
    std::fs::write(
        dir.join("old.weft.dev.yaml"),
        "kind: CustomResourceDefinition\n",
    )?;
    let out = crdgen(&["--check", "--dir", d])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("virtualrouters.weft.dev.yaml: missing"),
        "{err}"
    );
    assert!(err.contains("old.weft.dev.yaml: not generated"), "{err}");

    // Only the final newline differs: still drift.
    crdgen(&["--dir", d])?;
    std::fs::remove_file(dir.join("old.weft.dev.yaml"))?;
    std::fs::write(&vbr, text.trim_end())?;
    assert!(!crdgen(&["--check", "--dir", d])?.status.success());

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn bad_arguments_are_refused_with_usage() -> Result<()> {
    let out = crdgen(&["--frobnicate"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: crdgen"));
    Ok(())
}

#[test]
fn check_of_a_missing_directory_fails_loudly() -> Result<()> {
    let missing = Path::new("/nonexistent/weft/crds");
    let out = crdgen(&["--check", "--dir", missing.to_str().unwrap_or_default()])?;
    assert!(!out.status.success());
    Ok(())
}
