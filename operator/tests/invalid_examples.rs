//! Every manifest in examples/invalid/ is refused by the offline `translate` path, by the CRD
//! schema, the semantic check (`InvalidSpec`) or the list of unsupported fields
//! (`Unsupported`), as its header says, naming the field its header names; the examples
//! themselves stay valid next to it.

use std::path::{Path, PathBuf};

use weft_operator::offline::{self, Loaded, Outcome};
use weft_operator::{CrKind, Error, ObjectKey};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn header(text: &str, tag: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {tag}: ")))
        .map(|s| s.trim().to_owned())
}

#[tokio::test]
async fn every_invalid_example_is_refused_naming_its_field() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples().join("invalid"))
        .expect("examples/invalid exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "examples/invalid holds the refused objects"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let object =
            header(&text, "Object").unwrap_or_else(|| panic!("{file:?}: no Object header"));
        let field = header(&text, "Field").unwrap_or_else(|| panic!("{file:?}: no Field header"));
        let refused_by =
            header(&text, "Refused by").unwrap_or_else(|| panic!("{file:?}: no Refused by header"));
        let (kind, name) = object.split_once(' ').unwrap();
        let key = ObjectKey::new(CrKind::from_kind_name(kind).unwrap(), name);

        let loaded = Loaded::from_paths(&[examples(), file.clone()]).unwrap();
        let message = match loaded.refused.iter().find(|r| r.key == key) {
            Some(r) => {
                assert_eq!(refused_by, "schema", "{file:?}: refused by the schema");
                r.message.clone()
            }
            None => {
                let outcomes = offline::program_all(None, &loaded.inventory).await.unwrap();
                let (_, outcome) = outcomes
                    .iter()
                    .find(|(k, _)| *k == key)
                    .unwrap_or_else(|| panic!("{file:?}: {key} was neither refused nor checked"));
                let described = offline::describe(&key, outcome);
                match (refused_by.as_str(), outcome) {
                    ("unsupported", Outcome::Refused(Error::Unsupported { message, .. })) => {
                        assert!(
                            described.contains("refused, Unsupported: "),
                            "{file:?}: {described}"
                        );
                        message.clone()
                    }
                    (
                        "semantic" | "cel+semantic",
                        Outcome::Refused(Error::InvalidSpec { message, .. }),
                    ) => {
                        assert!(
                            described.contains("refused, InvalidSpec: "),
                            "{file:?}: {described}"
                        );
                        message.clone()
                    }
                    (_, other) => panic!(
                        "{file:?}: {key} was not refused as `Refused by: {refused_by}` says: {other:?}"
                    ),
                }
            }
        };
        assert!(
            message.starts_with(&format!("{field}:")) || message.contains(&format!("; {field}:")),
            "{file:?}: {message:?} does not name {field}"
        );
        // The examples themselves are unaffected.
        let outcomes = offline::program_all(None, &loaded.inventory).await.unwrap();
        for (k, o) in &outcomes {
            if loaded.sources[k].starts_with(examples().join("invalid")) {
                continue;
            }
            assert!(
                matches!(o, Outcome::Checked(_)),
                "{file:?}: {k} refused: {o:?}"
            );
        }
    }
}
