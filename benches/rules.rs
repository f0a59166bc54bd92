//! Decode + match + extract throughput with all shipped rules loaded, over the fixtures.
//! Run: cargo bench --bench rules

use alertgate::rules::{NoContext, RuleSet};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::PathBuf;

fn load_fixtures() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut all = Vec::new();
    let mut tools: Vec<_> = std::fs::read_dir(&root)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .collect();
    tools.sort();
    for tool in tools.iter().filter(|p| p.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(tool)
            .expect("tool dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        {
            let name = format!(
                "{}/{}",
                tool.file_name().unwrap_or_default().to_string_lossy(),
                file.file_name().unwrap_or_default().to_string_lossy()
            );
            all.push((name, std::fs::read(file).expect("read fixture")));
        }
    }
    all
}

fn bench_rules(c: &mut Criterion) {
    let rules = RuleSet::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")])
        .expect("shipped rules");
    let fixtures = load_fixtures();
    for (name, raw) in &fixtures {
        assert!(
            rules.parse(raw, &NoContext).is_ok(),
            "{name} does not parse"
        );
    }
    let bytes: usize = fixtures.iter().map(|(_, raw)| raw.len()).sum();

    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(fixtures.len() as u64));
    group.bench_function(
        format!("all_fixtures_{}_mails_{}_bytes", fixtures.len(), bytes),
        |b| {
            b.iter(|| {
                let mut alerts = 0;
                for (_, raw) in &fixtures {
                    alerts += rules
                        .parse(std::hint::black_box(raw), &NoContext)
                        .map_or(0, |a| a.len());
                }
                alerts
            })
        },
    );
    group.finish();

    let mut per_tool = c.benchmark_group("rules_per_tool");
    per_tool.throughput(Throughput::Elements(1));
    for tool in [
        "centreon/service-problem.eml",
        "nagios/service-problem.eml",
        "icinga/service-problem.eml",
        "vrops/alert-generated.eml",
        "zabbix/problem.eml",
        "alertmanager/firing-grouped.eml",
    ] {
        if let Some((_, raw)) = fixtures.iter().find(|(n, _)| n == tool) {
            per_tool.bench_function(tool, |b| {
                b.iter(|| rules.parse(std::hint::black_box(raw), &NoContext))
            });
        }
    }
    let unmatched = b"From: someone@example.com\r\nSubject: hello\r\n\r\nJust a normal mail, no rule for it.\r\n".to_vec();
    per_tool.bench_function("unmatched", |b| {
        b.iter(|| rules.parse(std::hint::black_box(&unmatched), &NoContext))
    });
    per_tool.finish();
}

criterion_group!(benches, bench_rules);
criterion_main!(benches);
