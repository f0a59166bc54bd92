//! GLPI feedback: learning an incident's ticket (id, Message-ID, status) from GLPI's
//! notification mail or its REST API, and solving tickets through that API.
//! Pure parsing and an HTTP client; the pipeline decides when to use them.

pub mod api;
pub mod notification;
pub mod rights;
pub mod worker;

pub use api::{
    lookup_backoff, ticket_status_from_code, ApiError, CreateMode, GlpiApi, GlpiApiConfig,
    NewTicket, RightsCheck, Secret,
};
pub use notification::{
    parse_notification, status_for_event, GlpiNotification, NotGlpi, NotificationReader,
};
pub use rights::{ApiRights, MissingRight, Needs};

#[cfg(test)]
mod tests {
    /// The pipeline reads notifications with this stage; this stage knows nothing of the
    /// pipeline (nor of correlation): what crosses between them lives in the model
    /// (`crate::ticket`, `crate::mail`).
    #[test]
    fn feedback_reaches_into_neither_the_pipeline_nor_correlation() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/feedback");
        let mut offenders = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("src/feedback is readable") {
            let path = entry.expect("a directory entry").path();
            let text = std::fs::read_to_string(&path).expect("a source file");
            for stage in [
                concat!("crate::", "pipeline"),
                concat!("crate::", "correlate"),
            ] {
                if text.contains(stage) {
                    offenders.push(format!("{} names {stage}", path.display()));
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:?}");
    }
}
