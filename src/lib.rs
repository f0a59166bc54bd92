//! alertgate: an SMTP gateway between monitoring tools and GLPI's mail collector.

pub mod alert;
pub mod app;
pub mod cli;
pub mod clock;
pub mod compose;
pub mod config;
pub mod correlate;
pub mod deliver;
pub mod feedback;
pub mod http;
pub mod mail;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod smtp;
pub mod store;
pub mod ticket;
