//! `check_rule_dirs` names each broken rule precisely: file, rule, field, problem.

use alertgate::rules::cli::check_rule_dirs;
use alertgate::rules::RuleSet;
use std::path::PathBuf;

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write rule file");
    path
}

#[test]
fn shipped_rules_load_cleanly() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    assert_eq!(
        check_rule_dirs(std::slice::from_ref(&shipped)),
        Vec::<String>::new()
    );
    let set = RuleSet::load(&[shipped]).expect("shipped rules load");
    assert!(set.len() >= 14, "only {} rules", set.len());
}

#[test]
fn broken_regex_unknown_capture_and_duplicate_are_each_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = write(
        dir.path(),
        "a_broken.toml",
        "source = \"x\"\n[[rule]]\nname = \"broken-regex\"\nmatch.subject = 'ok'\nextract.body = ['^Host: (?P<host>.+', 'fine']\ndefaults.type = \"problem\"\n",
    );
    let unknown = write(
        dir.path(),
        "b_unknown.toml",
        "source = \"x\"\n[[rule]]\nname = \"bad-capture\"\nmatch.subject = 'ok'\nextract.subject = '(?P<hostname>\\S+)'\n",
    );
    let first = write(
        dir.path(),
        "c_first.toml",
        "source = \"x\"\n[[rule]]\nname = \"twice\"\nmatch.subject = 'a'\n",
    );
    let second = write(
        dir.path(),
        "d_second.toml",
        "source = \"x\"\n[[rule]]\nname = \"twice\"\nmatch.subject = 'b'\n",
    );
    let messages = check_rule_dirs(&[dir.path().to_path_buf()]);
    assert_eq!(messages.len(), 3, "{messages:#?}");
    let expect_prefix = |path: &PathBuf, rest: &str| format!("{}: {rest}", path.display());
    assert!(
        messages[0].starts_with(&expect_prefix(
            &broken,
            "rule `broken-regex`: `extract.body[0]`: invalid regex:"
        )),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("unclosed group"), "{}", messages[0]);
    assert_eq!(
        messages[1],
        expect_prefix(
            &unknown,
            "rule `bad-capture`: `extract.subject[0]`: unknown capture name `hostname` (known: host, service, state, type, output, host_alias, long_output, author, comment, address, event_time, vendor_id, url)"
        )
    );
    assert_eq!(
        messages[2],
        expect_prefix(
            &second,
            &format!(
                "rule `twice`: `name`: duplicate rule name, also defined in {}",
                first.display()
            )
        )
    );
}

#[test]
fn toml_syntax_and_unknown_keys_are_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = write(
        dir.path(),
        "typo.toml",
        "source = \"x\"\n[[rule]]\nname = \"r\"\nmatch.subjet = 'a'\n",
    );
    let messages = check_rule_dirs(&[dir.path().to_path_buf()]);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(
        messages[0].starts_with(&format!("{}: invalid rule file:", typo.display())),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("subjet"), "{}", messages[0]);
}

#[test]
fn missing_directory_is_reported() {
    let messages = check_rule_dirs(&[PathBuf::from("/nonexistent/rules.d")]);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].starts_with("/nonexistent/rules.d: cannot read rule directory"),
        "{}",
        messages[0]
    );
}
