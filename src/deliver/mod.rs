//! (stub) to be written.
