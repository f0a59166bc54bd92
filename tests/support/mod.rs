//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

pub mod client;
pub mod gateway;
