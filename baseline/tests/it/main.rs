//! Integration tests of the baseline crate: in-process clusters where the baseline follows
//! the logical topology after the quiet period, and manual changes with validation.
mod auto_adjust;
mod harness;
mod manual;
