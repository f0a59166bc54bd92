//! The parser never panics: arbitrary bytes and mutations of real fixtures always give
//! alerts or an error.

use alertgate::rules::{NoContext, RuleSet};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")])
            .expect("shipped rules load")
    })
}

fn fixtures() -> &'static Vec<Vec<u8>> {
    static FIXTURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut all = Vec::new();
        for tool in std::fs::read_dir(root).expect("fixtures").flatten() {
            if let Ok(entries) = std::fs::read_dir(tool.path()) {
                for e in entries.flatten() {
                    if e.path().extension().is_some_and(|x| x == "eml") {
                        all.push(std::fs::read(e.path()).expect("read fixture"));
                    }
                }
            }
        }
        all.sort();
        all
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b"=?UTF-8?B?w6k=?=".to_vec()),
                    Just(b"=\r\n".to_vec()),
                    Just(b"<br>".to_vec()),
                    Just(b"&#x".to_vec()),
                    Just(b"Labels\n".to_vec()),
                    Just(b"--".to_vec()),
                    Just(vec![0xff, 0xfe, 0xe9]),
                    prop::collection::vec(any::<u8>(), 0..8),
                ],
                1..4
            )
            .prop_map(|parts| parts.concat())
        )
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..200).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(mut data: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = data.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if !data.is_empty() {
                data[i % len] ^= b;
            }
        }
        Mutation::Insert(i, bytes) => {
            let at = i % (data.len() + 1);
            data.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = i % (data.len() + 1);
            let end = (at + n).min(data.len());
            data.drain(at..end);
        }
        Mutation::Truncate(i) => data.truncate(i % (data.len() + 1)),
        Mutation::Duplicate(i, n) => {
            let at = i % (data.len() + 1);
            let end = (at + n).min(data.len());
            let copy = data[at..end].to_vec();
            data.splice(end..end, copy);
        }
    }
    data
}

fn well_formed(
    result: &Result<Vec<alertgate::alert::Alert>, alertgate::rules::ParseError>,
) -> bool {
    match result {
        Ok(alerts) => !alerts.is_empty(),
        Err(_) => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..2048)) {
        let result = rules().parse(&raw, &NoContext);
        prop_assert!(well_formed(&result));
    }

    #[test]
    fn mutated_fixtures_never_panic(index in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let all = fixtures();
        let mut raw = all[index % all.len()].clone();
        for m in &mutations {
            raw = apply(raw, m);
        }
        let result = rules().parse(&raw, &NoContext);
        prop_assert!(well_formed(&result));
    }
}
