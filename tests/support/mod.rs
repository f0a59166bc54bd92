//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

pub mod alerts;
pub mod client;
pub mod gateway;
pub mod glpi;
pub mod mailbox;
pub mod ops;
pub mod postgres;
pub mod relay;
