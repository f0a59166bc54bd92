//! `alertgate check`: precise errors (file, line, key, what is expected) and exit codes.

mod support;

use std::process::Command;
use support::glpi::{ApiProfile, GlpiConfig, GlpiDouble};

fn check(config_text: &str) -> (bool, String) {
    let config_text =
        &format!("{config_text}[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n[relay]\nhost = \"127.0.0.1\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertgate.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["check", "-c"])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn unknown_key_and_bad_cidr_are_both_named() {
    let (ok, out) = check(
        "[server]\nlisten = [\"127.0.0.1:2525\"]\naccepted_recipients = [\"glpi@example.test\"]\n\
allowed_networks = [\"127.0.0.0/8\", \"10.1.2.0/40\"]\nmax_mesage_size = 100\n",
    );
    assert!(!ok, "check must fail: {out}");
    assert!(
        out.contains("alertgate.toml:5: `server.max_mesage_size`: unknown key"),
        "{out}"
    );
    assert!(
        out.contains("alertgate.toml:4: `server.allowed_networks`: `10.1.2.0/40` is not a network"),
        "{out}"
    );
    assert!(out.contains("expected CIDR"), "{out}");
    assert!(out.contains("2 problem(s) found"), "{out}");
}

#[test]
fn shipped_example_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["check", "-c", "examples/alertgate.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("warning"), "the example threads: {stdout}");
}

#[test]
fn syntax_error_and_bad_values_are_explained() {
    let (ok, out) =
        check("[server]\nlisten = [\"127.0.0.1\"]\naccepted_recipients = [\"not-an-address\"]\n");
    assert!(!ok);
    assert!(
        out.contains("`server.listen`: `127.0.0.1` is not a socket address (expected IP:PORT"),
        "{out}"
    );
    assert!(
        out.contains("`server.accepted_recipients`: `not-an-address` is not an address"),
        "{out}"
    );
    let (ok, out) = check("[server\nlisten = 1\n");
    assert!(!ok);
    assert!(out.contains("alertgate.toml:1"), "{out}");
}

/// Runs `alertgate ARGS -c <config>` on a whole config text; returns (success, output).
fn run_with(args: &[&str], config_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertgate.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(args)
        .arg("-c")
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ALERTGATE_LOG", "warn")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const SERVER: &str =
    "[server]\nlisten = [\"127.0.0.1:0\"]\naccepted_recipients = [\"glpi@example.test\"]\n";
const RELAY: &str = "[relay]\nhost = \"127.0.0.1\"\nport = 9\n";

#[test]
fn a_config_with_no_feedback_source_passes_with_a_warning() {
    let (ok, out) = check("[server]\naccepted_recipients = [\"glpi@example.test\"]\n");
    assert!(ok, "a warning is not a failure: {out}");
    assert!(out.contains("warning: "), "{out}");
    assert!(
        out.contains("GLPI will open a new ticket for every update and recovery"),
        "{out}"
    );
    let (ok, out) = check(
        "[server]\naccepted_recipients = [\"glpi@example.test\"]\nfeedback_addresses = [\"a@example.test\"]\n",
    );
    assert!(ok && !out.contains("warning"), "{out}");
}

#[test]
fn a_bad_compose_from_fails_check_and_serve_alike() {
    let text = format!(
        "{SERVER}[compose]\nfrom = \"not an address\"\nto = \"glpi@example.test\"\n{RELAY}"
    );
    let (ok, out) = run_with(&["check"], &text);
    assert!(!ok, "{out}");
    let expected = "`compose.from`: compose.from = \"not an address\" is not a usable address";
    assert!(out.contains(expected), "{out}");
    assert!(out.contains("alertgate.toml:5:"), "line of the key: {out}");
    let (ok, served) = run_with(&["serve"], &text);
    assert!(!ok, "serve must refuse it: {served}");
    assert!(served.contains(expected), "{served}");

    // Same for the other sections' own checks.
    let text = format!(
        "{SERVER}[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n{RELAY}\
         max_parallel = 0\n[correlation]\nrepeat_interval = 0\n[feedback]\ncollector_batch = 0\n\
         [glpi_api]\nurl = \"glpi.example.test\"\nuser_token = \"t\"\n"
    );
    let (ok, out) = run_with(&["check"], &text);
    assert!(!ok);
    for expected in [
        "`relay`: invalid [relay] configuration: max_parallel must be at least 1",
        "`correlation.repeat_interval`: correlation.repeat_interval must be at least 1 second",
        "`feedback.collector_batch`: must be greater than 0",
        "`glpi_api`: invalid GLPI API configuration: glpi_api.url must start with http://",
        "4 problem(s) found",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in {out}");
    }
}

#[test]
fn new_feedback_and_api_keys_are_validated() {
    let base = format!(
        "{SERVER}[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n{RELAY}"
    );
    let (ok, out) = run_with(
        &["check"],
        &format!("{base}[feedback]\ncollector_interval_secs = 60\ncollector_batch = 10\nmin_mail_interval = 30\n[glpi_api]\nurl = \"http://127.0.0.1:9/apirest.php\"\nuser_token = \"t\"\ncreate = \"api\"\nentity = 2\ncategory = 5\nrequester = 7\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = run_with(
        &["check"],
        &format!("{base}[glpi_api]\nurl = \"http://127.0.0.1:9/apirest.php\"\nuser_token = \"t\"\nentity = 2\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("glpi_api.entity only applies with create = \"api\""),
        "{out}"
    );
    let (ok, out) = run_with(
        &["check"],
        &format!("{base}[glpi_api]\nurl = \"http://x/apirest.php\"\nuser_token = \"t\"\ncreate = \"rest\"\n"),
    );
    assert!(!ok);
    assert!(out.contains("unknown variant `rest`"), "{out}");
    let (ok, out) = run_with(
        &["check"],
        &format!("{base}[feedback]\nticket_lookup_timeout_secs = 120\n[glpi_api]\nurl = \"http://x/apirest.php\"\nuser_token = \"t\"\n"),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: ")
            && out.contains("120 s is shorter than one collector run (600 s)"),
        "{out}"
    );
}

/// `check --online` against the GLPI double whose API user has `profile`.
async fn check_online(profile: ApiProfile, api_extra: &str) -> (bool, String) {
    let glpi = GlpiDouble::start_with(GlpiConfig::default().with_profile(profile)).await;
    let c = glpi.config();
    let text = format!(
        "{SERVER}[compose]\nfrom = \"alertgate@example.test\"\nto = \"glpi@example.test\"\n{RELAY}\
         [glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = true\n{api_extra}",
        glpi.api_url(),
        c.user_token,
        c.app_token.clone().unwrap_or_default(),
    );
    let out = tokio::task::spawn_blocking(move || run_with(&["check", "--online"], &text))
        .await
        .unwrap();
    assert!(glpi.api_calls("getActiveProfile") >= 1, "{}", out.1);
    assert_eq!(glpi.api_calls("killSession"), 1, "the session is closed");
    out
}

#[tokio::test]
async fn check_online_names_the_right_a_self_service_user_lacks() {
    let (ok, out) = check_online(ApiProfile::self_service(), "").await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("profile `Self-Service` (simplified interface)"),
        "{out}"
    );
    assert!(
        out.contains("glpi_api: the API user cannot solve tickets (no ticket Update right"),
        "{out}"
    );
    assert!(
        out.contains("New, Processing (assigned), Processing (planned), Pending -> Solved"),
        "{out}"
    );
    assert!(
        out.contains("fix: use a profile with the standard interface"),
        "{out}"
    );
    assert!(out.contains("1 problem(s) found"), "{out}");

    let (ok, out) = check_online(
        ApiProfile::self_service(),
        "create = \"api\"\nrequester = 8\n",
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("cannot add follow-ups to tickets it did not request"),
        "{out}"
    );
}

#[tokio::test]
async fn check_online_passes_with_the_documented_profile() {
    let (ok, out) = check_online(ApiProfile::alertgate(), "create = \"api\"\n").await;
    assert!(ok, "{out}");
    assert!(
        out.contains("ok: user alertgate (id 7), profile `alertgate` (standard interface)"),
        "{out}"
    );
}

#[test]
fn check_online_reports_an_unreachable_glpi() {
    let text = format!(
        "{SERVER}[compose]\nfrom = \"alertgate@example.test\"\nto = \"glpi@example.test\"\n{RELAY}\
         [glpi_api]\nurl = \"http://127.0.0.1:9/apirest.php\"\nuser_token = \"t\"\ntimeout_secs = 2\n"
    );
    let (ok, out) = run_with(&["check", "--online"], &text);
    assert!(!ok);
    assert!(out.contains("GLPI API unreachable"), "{out}");
    let (ok, _) = run_with(&["check"], &text);
    assert!(ok, "offline, the same config is fine");
}

/// The profile README's "Connecting to GLPI" documents, read from the README itself:
/// its `ticket` / `followup` rights and, of the ticket life cycle, only the moves to
/// Solved it lists (every other move forbidden).
fn readme_profile() -> ApiProfile {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Connecting to GLPI").expect("section")..];
    let right = |name: &str| -> u32 {
        let re = regex::Regex::new(&format!(r"`{name} = (\d+)`")).unwrap();
        re.captures(section)
            .unwrap_or_else(|| panic!("README gives no `{name} = N`"))[1]
            .parse()
            .unwrap()
    };
    let names = [
        (1u8, "New"),
        (2, "Processing\n     (assigned)"),
        (3, "Processing (planned)"),
        (4, "Pending"),
    ];
    let mut allowed = Vec::new();
    for (from, name) in names {
        let flat = section.split_whitespace().collect::<Vec<_>>().join(" ");
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.contains(&format!("**{name} → Solved**")) {
            allowed.push((from, 5u8));
        }
    }
    assert_eq!(allowed.len(), 4, "README allows every open status → Solved");
    assert!(section.contains("Profile's interface: Standard interface"));
    let mut forbidden = Vec::new();
    for from in 1..=6u8 {
        for to in 1..=6u8 {
            if from != to && !allowed.contains(&(from, to)) {
                forbidden.push((from, to));
            }
        }
    }
    ApiProfile {
        id: 9,
        name: "alertgate".into(),
        interface: "central".into(),
        ticket: right("ticket"),
        followup: right("followup"),
        task: 0,
        forbidden_moves: forbidden,
    }
}

#[tokio::test]
async fn the_readme_profile_recipe_passes_check_online_and_solves() {
    let profile = readme_profile();
    let (ok, out) = check_online(profile.clone(), "").await;
    assert!(ok, "{out}");
    // And GLPI (the double, enforcing the profile) takes its tickets, follow-ups and
    // solutions, from any open status.
    use alertgate::feedback::{GlpiApi, GlpiApiConfig, NewTicket, Secret};
    let glpi = GlpiDouble::start_with(GlpiConfig::default().with_profile(profile)).await;
    let mut cfg = GlpiApiConfig::new(glpi.api_url(), glpi.config().user_token.clone());
    cfg.app_token = glpi.config().app_token.clone().map(Secret::new);
    let api = GlpiApi::new(&cfg).unwrap();
    for prepare in [0, 2, 4] {
        let id = api
            .create_ticket(&NewTicket::new(&cfg, "[ALERT-0d0d0d0d] x", "y", 3))
            .await
            .unwrap();
        api.add_followup(id, "update").await.unwrap();
        match prepare {
            2 => glpi.assign(id),
            4 => glpi.set_waiting(id),
            _ => {}
        }
        assert_eq!(glpi.ticket(id).unwrap().status, prepare.max(1));
        api.solve_ticket(id, "recovered").await.unwrap();
        assert_eq!(glpi.ticket(id).unwrap().status, 5);
    }
}
