//! Rule loading and matching: `rules/*.toml` → compiled rules → `Alert`s from a raw mail.
//! (stub, to be written)

pub mod cli {
    use std::path::PathBuf;

    /// `alertgate parse`: prints one JSON line per alert (or error) per file.
    /// Returns Ok(true) when every file matched.
    pub fn run_parse(rule_dirs: &[PathBuf], files: &[PathBuf], explain: bool) -> anyhow::Result<bool> {
        let _ = (rule_dirs, files, explain);
        anyhow::bail!("not implemented")
    }

    /// Validate rule directories for `alertgate check`; one precise message per problem.
    pub fn check_rule_dirs(rule_dirs: &[PathBuf]) -> Vec<String> {
        let _ = rule_dirs;
        Vec::new()
    }
}
