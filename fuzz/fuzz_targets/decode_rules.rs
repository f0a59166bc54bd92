//! Mail decoding and every rule in rules/: arbitrary bytes as a received mail. Parsing
//! must never panic; whatever alerts come out are also composed, which must not panic.
#![no_main]

use alertgate::rules::{NoContext, RuleSet};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        RuleSet::load(&[dir]).expect("rules load")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = alertgate::rules::message_id(data);
    if let Ok(alerts) = rules().parse(data, &NoContext) {
        for alert in &alerts {
            let _ = format!("{alert:?}");
        }
    }
});
