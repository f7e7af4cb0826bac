//! Configuration roots: the typed structs other crates define, and their type-erased keys.
use std::fmt;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Where a root is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigurationType {
    /// Node-local, in the vault.
    Local,
    /// Cluster-wide, in MetaStorage.
    Distributed,
}

/// A configuration root, implemented by the crate that owns it.
///
/// Derive `Serialize, Deserialize, Clone, Debug, PartialEq, Default` and put
/// `#[serde(default, deny_unknown_fields)]` on the struct and on every nested struct: a
/// storage holds only the values somebody set, and `serde(default)` fills in the rest.
pub trait ConfigRoot:
    Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static
{
    /// The root's key, the first segment of every path in it (`network`).
    const KEY: &'static str;
    /// Where the root is stored.
    const TYPE: ConfigurationType;

    /// Checks beyond types (ranges, consistency); `Err((relative key like "port", reason))`.
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        Ok(())
    }
}

/// Validates a sparse root value and returns the root's full value (defaults filled in).
type Check = fn(&str, Value) -> Result<Value>;

/// A type-erased [`ConfigRoot`]: its key, storage type, default value and validator.
#[derive(Clone)]
pub struct RootKey {
    key: &'static str,
    ty: ConfigurationType,
    default: Value,
    check: Check,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("key", &self.key)
            .field("type", &self.ty)
            .finish()
    }
}

impl RootKey {
    /// The key of root `T`.
    ///
    /// # Panics
    /// If `T::default()` cannot be represented as JSON (a bug in the root's definition, for
    /// example a map with non-string keys).
    pub fn of<T: ConfigRoot>() -> Self {
        #[allow(clippy::expect_used)] // a programming error in the root type, not input
        let default = serde_json::to_value(T::default())
            .expect("a configuration root's default must serialize to json");
        Self {
            key: T::KEY,
            ty: T::TYPE,
            default,
            check: check_root::<T>,
        }
    }

    /// The root's key (`network`).
    pub fn key(&self) -> &str {
        self.key
    }

    /// Where the root is stored.
    pub fn storage_type(&self) -> ConfigurationType {
        self.ty
    }

    /// The root's default value as JSON.
    pub fn default_value(&self) -> &Value {
        &self.default
    }

    /// Validates `sparse` (only the values somebody set; `Null` = nothing set) and returns the
    /// root's full value. Errors name the full dotted key.
    pub fn validate(&self, sparse: Value) -> Result<Value> {
        (self.check)(self.key, sparse)
    }
}

/// Parses `sparse` as `T`, runs `T::validate` and returns the full value.
pub(crate) fn parse_root<T: ConfigRoot>(root: &str, sparse: Value) -> Result<T> {
    let sparse = if sparse.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        sparse
    };
    let value: T = serde_path_to_error::deserialize(sparse).map_err(|e| {
        let rel = e.path().to_string();
        let key = if rel == "." {
            root.to_owned()
        } else {
            format!("{root}.{rel}")
        };
        let reason = e.into_inner().to_string();
        if reason.starts_with("unknown field") {
            Error::unknown(key)
        } else {
            Error::invalid(key, reason)
        }
    })?;
    value.validate().map_err(|(rel, reason)| {
        let key = if rel.is_empty() {
            root.to_owned()
        } else {
            format!("{root}.{rel}")
        };
        Error::invalid(key, reason)
    })?;
    Ok(value)
}

fn check_root<T: ConfigRoot>(root: &str, sparse: Value) -> Result<Value> {
    let value = parse_root::<T>(root, sparse)?;
    serde_json::to_value(&value).map_err(|e| Error::invalid(root, e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Node {
        name: String,
        port: u16,
        seeds: Vec<String>,
    }

    impl Default for Node {
        fn default() -> Self {
            Self {
                name: "n".into(),
                port: 3344,
                seeds: Vec::new(),
            }
        }
    }

    impl ConfigRoot for Node {
        const KEY: &'static str = "node";
        const TYPE: ConfigurationType = ConfigurationType::Local;
        fn validate(&self) -> std::result::Result<(), (String, String)> {
            if self.port < 1024 {
                return Err(("port".into(), "must be at least 1024".into()));
            }
            Ok(())
        }
    }

    #[test]
    fn defaults_fill_what_was_not_set() {
        let key = RootKey::of::<Node>();
        assert_eq!(key.key(), "node");
        let full = key.validate(json!({"name": "a"})).unwrap();
        assert_eq!(full, json!({"name": "a", "port": 3344, "seeds": []}));
        assert_eq!(key.validate(Value::Null).unwrap(), *key.default_value());
    }

    #[test]
    fn errors_name_the_full_key_and_reason() {
        let key = RootKey::of::<Node>();
        let cases = [
            (json!({"foo": 1}), "key node.foo: unknown configuration key"),
            (
                json!({"seeds": "a"}),
                "key node.seeds: invalid type: string \"a\", expected a sequence",
            ),
            (
                json!({"port": 70000}),
                "key node.port: invalid value: integer `70000`, expected u16",
            ),
            (json!({"port": 80}), "key node.port: must be at least 1024"),
            (
                json!(5),
                "key node: invalid type: integer `5`, expected struct Node",
            ),
        ];
        for (value, message) in cases {
            let err = key.validate(value.clone()).unwrap_err();
            assert_eq!(err.to_string(), message, "for {value}");
        }
        assert!(matches!(
            key.validate(json!({"foo": 1})).unwrap_err(),
            Error::UnknownKey { .. }
        ));
    }
}
