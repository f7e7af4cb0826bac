//! network crate (under construction).
