//! node crate (under construction).
