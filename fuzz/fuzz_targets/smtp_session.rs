//! The SMTP session (line framing, smtp-proto grammar, state machine, AUTH, DATA into a
//! real spool) fed arbitrary client bytes over an in-memory stream. It must never panic,
//! and every reply line must be a well-formed `NNN[ -]text` without control bytes.
#![no_main]

use alertgate::config::LoadedConfig;
use alertgate::smtp::session::Session;
use alertgate::smtp::Shared;
use alertgate::store::SpoolHandle;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("alertgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"fuzz.test\"\n\
             accepted_recipients = [\"glpi@example.test\"]\ncommand_timeout_secs = 1\n\
             data_timeout_secs = 1\nmax_message_size = 65536\n\
             [server.auth]\nallow_plaintext_on_loopback = true\n\
             [[server.auth.users]]\nusername = \"u\"\npassword = \"p\"\n\
             [store]\npath = \"{}\"\n[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n\
             [relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
            dir.join("fuzz.db").display()
        );
        let path = dir.join("alertgate.toml");
        let loaded = LoadedConfig::from_str(&path, &text).expect("fuzz config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let spool = runtime
            .block_on(async {
                SpoolHandle::start(
                    &loaded.config.store.location(),
                    &loaded.config.store.incoming_dir(),
                    16,
                )
            })
            .expect("spool");
        let shared = Arc::new(Shared {
            config: loaded.config.clone(),
            policy: loaded.policy.clone(),
            spool,
            tls: None,
            auth_throttle: Arc::new(alertgate::smtp::auth::AuthThrottle::new(
                std::time::Duration::from_millis(1),
            )),
        });
        World { runtime, shared }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    world.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let peer = "127.0.0.1:40000".parse().expect("peer");
        let session = Session::new(Box::new(server), Arc::clone(&world.shared), peer, stop);
        let run = tokio::spawn(session.run());
        let (mut read, mut write) = tokio::io::split(client);
        let _ = write.write_all(data).await;
        let _ = write.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read.read_to_end(&mut out),
        )
        .await;
        let _ = run.await;
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").expect("replies end with CRLF");
            assert!(line.len() >= 4, "short reply line {line:?}");
            assert!(line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
            assert!(matches!(line[3], b' ' | b'-'), "{line:?}");
            assert!(
                !line.iter().any(|b| b.is_ascii_control()),
                "control byte in reply {line:?}"
            );
        }
    });
});
