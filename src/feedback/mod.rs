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
