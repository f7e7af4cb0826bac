//! configuration crate (under construction).
