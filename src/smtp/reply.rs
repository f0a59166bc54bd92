//! SMTP replies with their enhanced status codes, in one place so the wording and codes
//! the clients see are consistent and easy to review against RFC 5321/3463/4954.

/// One SMTP reply: basic code, enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// A reply the client caused by a mistake (counts toward the session's error limit).
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Replies may quote the client (a parameter, an address): never its controls.
        // Found by the smtp_session fuzz target (`SIZE\x1b=100` echoed as is).
        let text: String = self
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if self.enhanced.is_empty() {
            out.extend_from_slice(format!("{} {}\r\n", self.code, text).as_bytes());
        } else {
            out.extend_from_slice(
                format!("{} {} {}\r\n", self.code, self.enhanced, text).as_bytes(),
            );
        }
    }
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}
pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Sender ok")
}
pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Recipient ok")
}
pub fn queued(id: i64) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
}
pub fn start_data() -> Reply {
    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
}
pub fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}
pub fn vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    )
}
pub fn tls_ready() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}
pub fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0", "Authentication successful")
}

pub fn client_refused(ip: &str) -> Reply {
    Reply::new(
        554,
        "5.7.1",
        format!("Client host [{ip}] is not allowed to send mail here"),
    )
}
pub fn too_many_connections() -> Reply {
    Reply::new(421, "4.7.0", "Too many connections, try again later")
}
pub fn too_many_connections_from_client() -> Reply {
    Reply::new(
        421,
        "4.7.0",
        "Too many connections from your address, try again later",
    )
}
pub fn idle_evicted(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Server busy, closing idle connection"),
    )
}
pub fn inflight_full() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
}
pub fn binarymime_unsupported() -> Reply {
    Reply::new(
        555,
        "5.5.4",
        "BODY=BINARYMIME is not supported (no CHUNKING)",
    )
}
pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "Too many errors, closing connection")
}
pub fn timeout(host: &str) -> Reply {
    Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded"))
}
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{host} Service shutting down, try again later"),
    )
}

pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.2", "Error: command not recognized")
}
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2", "Error: line too long")
}
pub fn syntax(usage: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
}
pub fn bad_sender_address() -> Reply {
    Reply::new(501, "5.1.7", "Bad sender address syntax")
}
pub fn bad_recipient_address() -> Reply {
    Reply::new(501, "5.1.3", "Bad recipient address syntax")
}
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported option: {param}"))
}
pub fn not_implemented() -> Reply {
    Reply::new(502, "5.5.1", "Error: command not implemented")
}
pub fn need_helo() -> Reply {
    Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")
}
pub fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: nested MAIL command")
}
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: need MAIL command")
}
pub fn need_rcpt() -> Reply {
    Reply::new(503, "5.5.1", "Error: need RCPT command")
}
pub fn message_too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message size exceeds fixed limit")
}
pub fn relay_denied(rcpt: &str) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        format!("<{rcpt}>: Recipient address rejected: relay access denied"),
    )
}
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "Error: too many recipients")
}
pub fn store_failed() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "Error: queue file write error, try again later",
    )
}
pub fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}
pub fn encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}
pub fn must_starttls_first() -> Reply {
    Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
}
pub fn auth_not_enabled() -> Reply {
    Reply::new(503, "5.5.1", "Error: authentication not enabled")
}
pub fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.1", "Error: already authenticated")
}
pub fn auth_mechanism_unsupported() -> Reply {
    Reply::new(504, "5.5.4", "Unrecognized authentication type")
}
pub fn too_many_auth_failures() -> Reply {
    Reply::new(
        421,
        "4.7.0",
        "Too many failed authentication attempts, try again later",
    )
}
pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}
pub fn auth_aborted() -> Reply {
    Reply::new(501, "5.7.0", "Authentication aborted")
}
pub fn auth_bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Invalid base64 data")
}
pub fn tls_not_available() -> Reply {
    Reply::new(454, "4.7.0", "TLS not available")
}
pub fn already_tls() -> Reply {
    Reply::new(503, "5.5.1", "Error: TLS already active")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_enhanced_codes_and_no_stray_newlines() {
        let mut out = Vec::new();
        Reply::new(550, "5.7.1", "a\r\nb").write_to(&mut out);
        assert_eq!(out, b"550 5.7.1 a  b\r\n");
        let mut out = Vec::new();
        start_data().write_to(&mut out);
        assert_eq!(out, b"354 End data with <CR><LF>.<CR><LF>\r\n");
    }
}
