//! Integration tests of the schema crate: encoding properties and decoder fuzzing, the JSON
//! edge (table-driven errors), alter and upgrade of old rows, and in-process clusters
//! (concurrent alters, schemas seen on every node through the watch, restart).
mod alter;
mod cluster;
mod encoding;
mod harness;
mod json;
mod strategies;
