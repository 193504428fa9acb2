//! The crate is test code: no package of the workspace may depend on it outside
//! `[dev-dependencies]`, or its panicking helpers would reach a shipped binary.

use std::path::Path;

#[test]
fn finding_14_test_support_is_only_ever_a_dev_dependency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut manifests = vec![root.join("kernel/harness/Cargo.toml")];
    for e in std::fs::read_dir(root.join("crates")).unwrap() {
        manifests.push(e.unwrap().path().join("Cargo.toml"));
    }
    let mut users = 0;
    for m in manifests.iter().filter(|m| m.is_file()) {
        let doc: toml::Table = std::fs::read_to_string(m).unwrap().parse().unwrap();
        let mut tables = vec![
            ("dependencies".to_string(), doc.get("dependencies")),
            ("build-dependencies".into(), doc.get("build-dependencies")),
        ];
        if let Some(toml::Value::Table(targets)) = doc.get("target") {
            for (t, v) in targets {
                tables.push((format!("target.{t}.dependencies"), v.get("dependencies")));
            }
        }
        for (name, t) in tables {
            let has = t.and_then(|t| t.as_table()).is_some_and(|t| t.contains_key("imasnap-test-support"));
            assert!(!has, "{}: imasnap-test-support in [{name}]; it belongs in [dev-dependencies]", m.display());
        }
        let dev = doc.get("dev-dependencies").and_then(|t| t.as_table());
        users += usize::from(dev.is_some_and(|t| t.contains_key("imasnap-test-support")));
    }
    assert!(users >= 6, "only {users} crates use the shared helpers");
    let own: toml::Table =
        std::fs::read_to_string(root.join("crates/test-support/Cargo.toml")).unwrap().parse().unwrap();
    assert_eq!(own["package"]["publish"].as_bool(), Some(false), "never published");
}
