//! Operator commands beyond `serve` and `check`: submitting mail files (`inject`),
//! viewing incidents, asking the running gateway to reload or for the outcomes it holds
//! in memory, and hashing AUTH passwords.

pub mod held;
pub mod incidents;
pub mod inject;
pub mod passwd;
pub mod reload;
