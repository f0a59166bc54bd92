//! Threading headers: our stable Message-IDs, In-Reply-To/References towards the
//! incident's first mail and GLPI's ticket Message-ID, and Outlook's Thread-Index.
//! Everything is derived from (tag, seq, first_seen), so a retried mail is identical.

use base64::Engine as _;

use super::ComposeError;

/// Used when the configured host name has nothing usable left after cleaning.
const FALLBACK_DOMAIN: &str = "alertgate.localdomain";

/// Outlook stops at some depth anyway; beyond this, replies share one index length.
const MAX_CHILD_BLOCKS: u32 = 64;

/// Seconds between 1601-01-01 (FILETIME epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: i64 = 11_644_473_600;

/// Checks an incident tag: it lands in a subject between brackets and in a
/// Message-ID local part, so only a conservative alphabet is accepted.
pub fn validate_incident_tag(tag: &str) -> Result<(), ComposeError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ComposeError::InvalidIncidentTag(tag.to_owned()))
    }
}

/// GLPI drops any mail whose Message-ID looks like its own, and its patterns start
/// with `GLPI`: so the word must never appear, in any case.
fn without_glpi(text: &str) -> String {
    let mut out = text.to_ascii_lowercase();
    while out.contains("glpi") {
        out = out.replace("glpi", "gl-pi");
    }
    out
}

/// The domain part of our Message-IDs: the host name reduced to DNS characters.
pub fn message_id_domain(hostname: &str) -> String {
    let cleaned: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    let cleaned = without_glpi(cleaned.trim_matches('.'));
    if cleaned.is_empty() || cleaned.contains("..") {
        FALLBACK_DOMAIN.to_owned()
    } else {
        cleaned
    }
}

/// `<{tag}.{seq}@{domain}>`, lowercase, never containing "glpi".
pub fn message_id(tag: &str, seq: u32, hostname: &str) -> String {
    format!(
        "<{}.{seq}@{}>",
        without_glpi(tag),
        message_id_domain(hostname)
    )
}

/// A Message-ID learned from GLPI, cleaned to `<left@right>` form; `None` (with a
/// warning) when it is unusable, so a bad learned value cannot block mail.
pub fn clean_foreign_message_id(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed);
    let valid = inner.len() <= 900
        && inner
            .split_once('@')
            .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty())
        && inner
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\' | '(' | ')'));
    if valid {
        Some(format!("<{inner}>"))
    } else {
        tracing::warn!(message_id = %raw.escape_debug(), "ignoring unusable GLPI Message-ID");
        None
    }
}

/// In-Reply-To and References for one mail of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadRefs {
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
}

/// GLPI's ticket Message-ID comes first (it is what the collector matches), then the
/// incident's first mail, so clients thread under the opening alert.
pub fn thread_refs(root_id: &str, seq: u32, glpi_id: Option<&str>) -> ThreadRefs {
    let mut refs: Vec<&str> = Vec::new();
    if let Some(glpi) = glpi_id {
        refs.push(glpi);
    }
    if seq > 0 {
        refs.push(root_id);
    }
    let in_reply_to = glpi_id
        .map(str::to_owned)
        .or_else(|| (seq > 0).then(|| root_id.to_owned()));
    ThreadRefs {
        in_reply_to,
        references: (!refs.is_empty()).then(|| refs.join(" ")),
    }
}

/// Outlook/Exchange `Thread-Index`: base64 of a 22-byte header (0x01, 5 bytes of the
/// FILETIME of `first_seen`, a 16-byte GUID derived from the tag) followed by one
/// 5-byte child block per reply level (MS-OXOMSG 2.2.1.3).
pub fn thread_index(tag: &str, seq: u32, first_seen: i64) -> String {
    let mut bytes = Vec::with_capacity(22 + 5 * seq.min(MAX_CHILD_BLOCKS) as usize);
    bytes.push(0x01);
    let filetime = filetime_of_unix(first_seen);
    // The header keeps the 40 most significant bits of the FILETIME, big-endian.
    bytes.extend_from_slice(&(filetime >> 24).to_be_bytes()[3..8]);
    bytes.extend_from_slice(&guid_for_tag(tag));
    for level in 1..=seq.min(MAX_CHILD_BLOCKS) {
        bytes.extend_from_slice(&child_block(tag, level));
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn filetime_of_unix(unix_secs: i64) -> u64 {
    let secs = unix_secs.saturating_add(FILETIME_UNIX_OFFSET_SECS).max(0) as u64;
    secs.saturating_mul(10_000_000)
}

/// A child block claims `level` seconds after the header (the real send times are
/// not known when composing), delta code 0: 31 bits of `delta >> 18`, then a byte
/// derived from the tag in place of Outlook's random byte.
fn child_block(tag: &str, level: u32) -> [u8; 5] {
    let delta_filetime = u64::from(level) * 10_000_000;
    let delta = ((delta_filetime >> 18) & 0x7FFF_FFFF) as u32;
    let mut block = [0u8; 5];
    block[..4].copy_from_slice(&delta.to_be_bytes());
    block[4] = (fnv1a64(tag.as_bytes(), u64::from(level)) & 0xFF) as u8;
    block
}

/// A stable 16-byte GUID (RFC 9562 version 8 layout) from the tag.
fn guid_for_tag(tag: &str) -> [u8; 16] {
    let mut guid = [0u8; 16];
    guid[..8].copy_from_slice(&fnv1a64(tag.as_bytes(), 0x5448_5245_4144_0001).to_be_bytes());
    guid[8..].copy_from_slice(&fnv1a64(tag.as_bytes(), 0x5448_5245_4144_0002).to_be_bytes());
    guid[6] = (guid[6] & 0x0F) | 0x80;
    guid[8] = (guid[8] & 0x3F) | 0x80;
    guid
}

/// FNV-1a with a seed folded into the offset basis: deterministic across builds and
/// platforms, unlike std's hasher.
fn fnv1a64(data: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(index: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(index)
            .unwrap()
    }

    #[test]
    fn message_ids_are_stable_lowercase_and_glpi_free() {
        assert_eq!(
            message_id("ALERT-1f3a9c2e", 3, "mx1.example.com"),
            "<alert-1f3a9c2e.3@mx1.example.com>"
        );
        assert_eq!(
            message_id("ALERT-1f3a9c2e", 3, "mx1.example.com"),
            message_id("ALERT-1f3a9c2e", 3, "mx1.example.com")
        );
        let id = message_id("GLPIALERT", 0, "GLPI-relay.Glpi.corp");
        assert!(!id.to_ascii_lowercase().contains("glpi"), "{id}");
        assert_eq!(id, "<gl-pialert.0@gl-pi-relay.gl-pi.corp>");
    }

    #[test]
    fn odd_host_names_fall_back_or_are_cleaned() {
        assert_eq!(message_id_domain(""), FALLBACK_DOMAIN);
        assert_eq!(message_id_domain("a..b"), FALLBACK_DOMAIN);
        assert_eq!(message_id_domain("host name\r\n@x"), "hostnamex");
    }

    #[test]
    fn incident_tags_are_validated() {
        assert!(validate_incident_tag("ALERT-1f3a9c2e").is_ok());
        assert!(validate_incident_tag("").is_err());
        assert!(validate_incident_tag("a b").is_err());
        assert!(validate_incident_tag("a.b").is_err());
        assert!(validate_incident_tag("a#1").is_err());
    }

    #[test]
    fn references_chain_to_root_and_glpi() {
        let root = "<t.0@h>";
        assert_eq!(thread_refs(root, 0, None), ThreadRefs::default());
        assert_eq!(
            thread_refs(root, 2, None),
            ThreadRefs {
                in_reply_to: Some(root.into()),
                references: Some(root.into())
            }
        );
        let glpi = "<GLPI_abc-Ticket-123/new@glpi.example>";
        assert_eq!(
            thread_refs(root, 2, Some(glpi)),
            ThreadRefs {
                in_reply_to: Some(glpi.into()),
                references: Some(format!("{glpi} {root}"))
            }
        );
    }

    #[test]
    fn foreign_message_ids_are_cleaned_or_dropped() {
        assert_eq!(
            clean_foreign_message_id(" GLPI_abc-Ticket-1/new@h "),
            Some("<GLPI_abc-Ticket-1/new@h>".into())
        );
        assert_eq!(clean_foreign_message_id("<a@b>\r\nBcc: x"), None);
        assert_eq!(clean_foreign_message_id("no-at-sign"), None);
    }

    #[test]
    fn thread_index_has_outlook_layout() {
        let first_seen = 1_700_000_000;
        let root = decode(&thread_index("ALERT-1", 0, first_seen));
        assert_eq!(root.len(), 22);
        assert_eq!(root[0], 0x01);
        let filetime = filetime_of_unix(first_seen);
        let mut high = [0u8; 8];
        high[3..8].copy_from_slice(&root[1..6]);
        assert_eq!(u64::from_be_bytes(high), filetime >> 24);

        let reply = decode(&thread_index("ALERT-1", 2, first_seen));
        assert_eq!(reply.len(), 32);
        assert_eq!(&reply[..22], &root[..], "replies extend the root index");
        let first_reply = decode(&thread_index("ALERT-1", 1, first_seen));
        assert_eq!(&reply[..27], &first_reply[..]);
        assert_eq!(reply[22] & 0x80, 0, "delta code 0 for short deltas");
    }

    #[test]
    fn thread_index_is_deterministic_and_per_tag() {
        assert_eq!(thread_index("A", 3, 5), thread_index("A", 3, 5));
        let a = decode(&thread_index("A", 0, 5));
        let b = decode(&thread_index("B", 0, 5));
        assert_ne!(a[6..22], b[6..22]);
        let deep = decode(&thread_index("A", 10_000, 5));
        assert_eq!(deep.len(), 22 + 5 * MAX_CHILD_BLOCKS as usize);
    }
}
