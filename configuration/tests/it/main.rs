//! Integration tests of the configuration crate: bootstrap from file, environment and flags;
//! the manager over the vault (durability, listeners, validation, merge patch); a second
//! storage of type `Distributed`; and a property test of `change` on arbitrary JSON.
mod bootstrap;
mod distributed;
mod manager;
mod properties;
mod support;
