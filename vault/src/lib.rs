//! vault crate (under construction).
