//! Operator commands beyond `serve` and `check`: submitting mail files (`inject`),
//! viewing incidents, asking the running gateway to reload, and hashing AUTH passwords.

pub mod incidents;
pub mod inject;
pub mod passwd;
pub mod reload;
