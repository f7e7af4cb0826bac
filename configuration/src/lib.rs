//! Typed configuration after Apache Ignite 3: roots, bootstrap values, storages, listeners.
//!
//! API boundary: [`ConfigRoot`] (implemented by the crates that own a root: `node`,
//! `network`, ...), [`BootstrapConfig`] (TOML file + environment + CLI flags),
//! [`ConfigurationStorage`] (with [`LocalConfigurationStorage`] over the vault; a distributed
//! storage over MetaStorage plugs in from the `metastorage` crate) and
//! [`ConfigurationManager`] (the component).
//!
//! Invariants:
//! - a storage holds only the values somebody set (sparse, flat dotted keys); defaults fill
//!   the rest when a root is read, so a new default reaches old nodes;
//! - every value is validated (unknown keys, types, [`ConfigRoot::validate`]) before anything
//!   is written: a rejected change or bootstrap leaves the storage untouched;
//! - once a storage is bootstrapped it is the source of truth: differing bootstrap values are
//!   ignored and reported, never applied;
//! - listeners run after the change is durable, deepest path first.
mod bootstrap;
mod error;
mod manager;
mod root;
mod storage;
mod tree;

pub use crate::{
    bootstrap::BootstrapConfig,
    error::{Error, Result},
    manager::{ConfigChange, ConfigurationManager, Listener},
    root::{ConfigRoot, ConfigurationType, RootKey},
    storage::{ConfigurationStorage, LocalConfigurationStorage, StorageSnapshot},
};
