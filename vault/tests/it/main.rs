//! Integration tests of the vault: the conformance suite on both storages, the manager's
//! lifecycle and subscriptions, bad input (locked, corrupt), and a model-based property test.
mod bad_input;
mod conformance;
mod manager;
mod model;
mod support;
mod write_metric;
