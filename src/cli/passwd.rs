//! `alertgate passwd`: prints an argon2id hash for `[server.auth]` users'
//! `password_hash`, as `doveadm pw -s ARGON2ID` does for Dovecot.

use argon2::password_hash::PasswordHasher;

/// A PHC string (`$argon2id$v=19$...`) with a random salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}
