//! The values a node bootstraps with: TOML file, environment overrides, CLI flags.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    root::{parse_root, ConfigRoot, RootKey},
    tree::{apply_at, flatten_root, get_at, segments},
};

/// The prefix of environment overrides: `IGNITE__NETWORK__LISTEN=127.0.0.1:0`.
const ENV_PREFIX: &str = "IGNITE__";
/// The separator between path segments in an environment variable's name.
const ENV_SEPARATOR: &str = "__";

/// The values a node bootstraps with: the TOML file (if any), then environment overrides,
/// then explicit overrides (CLI flags). Holds only what was set; defaults fill the rest.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    roots: Vec<RootKey>,
    /// Root key -> the root's sparse value (only what was set).
    values: Map<String, Value>,
    file: Option<PathBuf>,
}

impl BootstrapConfig {
    /// An empty bootstrap configuration: every root at its defaults.
    pub fn new(roots: &[RootKey]) -> Self {
        Self {
            roots: roots.to_vec(),
            values: Map::new(),
            file: None,
        }
    }

    /// Reads the TOML file (if any), then environment variables `IGNITE__SECTION__KEY`, and
    /// validates the result against `roots`. Errors name the file or variable, the full
    /// dotted key and the reason.
    pub fn load(roots: &[RootKey], file: Option<&Path>) -> Result<Self> {
        // `vars_os`: a variable that is not unicode must not panic; such ones cannot be ours
        let env = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        Self::load_with_env(roots, file, env)
    }

    /// [`BootstrapConfig::load`] with an explicit environment: `(name, value)` pairs; names
    /// without the `IGNITE__` prefix are ignored.
    pub fn load_with_env(
        roots: &[RootKey],
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut cfg = Self::new(roots);
        if let Some(path) = file {
            let origin = format!("file {}", path.display());
            let tree = read_toml(path)?;
            cfg.apply("", tree).map_err(|e| e.with_origin(&origin))?;
            cfg.file = Some(path.to_path_buf());
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let origin = format!("environment variable {name}");
            cfg.apply_env(&name, &raw)
                .map_err(|e| e.with_origin(&origin))?;
        }
        Ok(cfg)
    }

    /// Overrides one value (a CLI flag): `set("node.name", json!("n1"))`. An object merges
    /// into the object there, `null` resets to the default. Validated; unchanged on error.
    pub fn set(&mut self, path: &str, value: Value) -> Result<()> {
        self.apply(path, value)
    }

    /// Overrides several values at once (all the flags of one start): merged in order and
    /// validated together, so values that are only valid together (a minimum and a maximum
    /// both raised) can be given in any order. Unchanged on error.
    pub fn set_all(&mut self, values: impl IntoIterator<Item = (String, Value)>) -> Result<()> {
        self.apply_all(values)
    }

    /// Typed view of one root (defaults filled in).
    pub fn root<T: ConfigRoot>(&self) -> Result<T> {
        parse_root::<T>(
            T::KEY,
            self.values.get(T::KEY).cloned().unwrap_or(Value::Null),
        )
    }

    /// The file the values were read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Every value that was set (file, environment, flags), as one JSON object by root.
    pub fn values(&self) -> Value {
        Value::Object(self.values.clone())
    }

    /// The roots this configuration was validated against.
    pub fn root_keys(&self) -> &[RootKey] {
        &self.roots
    }

    /// The sparse value of one root (what was set), if anything was.
    pub(crate) fn sparse(&self, root: &str) -> Option<&Value> {
        self.values.get(root)
    }

    fn root_key(&self, key: &str) -> Result<&RootKey> {
        self.roots
            .iter()
            .find(|r| r.key() == key)
            .ok_or_else(|| Error::unknown(key))
    }

    /// Applies `value` at `path` (merge-patch semantics), validating every touched root;
    /// nothing changes on error.
    fn apply(&mut self, path: &str, value: Value) -> Result<()> {
        self.apply_all([(path.to_owned(), value)])
    }

    /// Merges every value into a copy, then validates each touched root once: values that
    /// are only valid together (a minimum and a maximum) may come in any order. Unchanged on
    /// error.
    fn apply_all(&mut self, changes: impl IntoIterator<Item = (String, Value)>) -> Result<()> {
        let mut values = self.values.clone();
        let mut touched = std::collections::BTreeSet::new();
        for (path, value) in changes {
            touched.extend(self.merge(&mut values, &path, value)?);
        }
        for root in touched {
            let sparse = values.get(&root).cloned().unwrap_or(Value::Null);
            flatten_root(&root, &sparse)?;
            self.root_key(&root)?.validate(sparse)?;
        }
        self.values = values;
        Ok(())
    }

    /// Merges `value` at `path` into `values` without validating; returns the roots touched.
    fn merge(
        &self,
        values: &mut Map<String, Value>,
        path: &str,
        value: Value,
    ) -> Result<Vec<String>> {
        let segs = segments(path);
        let mut touched = Vec::new();
        match segs.split_first() {
            None => {
                let Value::Object(map) = value else {
                    return Err(Error::invalid(
                        "(all roots)",
                        format!("expected a table of configuration roots, got {value}"),
                    ));
                };
                for (root, v) in map {
                    self.root_key(&root)?;
                    apply_at(
                        values
                            .entry(root.clone())
                            .or_insert_with(|| Value::Object(Map::new())),
                        &[],
                        v,
                    );
                    touched.push(root);
                }
            }
            Some((root, rest)) => {
                self.root_key(root)?;
                apply_at(
                    values
                        .entry((*root).to_owned())
                        .or_insert_with(|| Value::Object(Map::new())),
                    rest,
                    value,
                );
                touched.push((*root).to_owned());
            }
        }
        Ok(touched)
    }

    /// Applies one environment override; the raw string is typed after the value it replaces
    /// (a number where a number is, a comma-separated list where a list is).
    fn apply_env(&mut self, name: &str, raw: &str) -> Result<()> {
        let rest = name.strip_prefix(ENV_PREFIX).unwrap_or(name);
        let segs: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if segs.iter().any(String::is_empty) {
            return Err(Error::invalid(
                segs.join("."),
                "malformed variable name, expected IGNITE__SECTION__KEY",
            ));
        }
        let path = segs.join(".");
        let root = self.root_key(&segs[0])?;
        let current = root.validate(self.sparse(&segs[0]).cloned().unwrap_or(Value::Null))?;
        let seg_refs: Vec<&str> = segs[1..].iter().map(String::as_str).collect();
        let candidates = env_candidates(get_at(&current, &seg_refs), raw);
        let mut first_err = None;
        for candidate in candidates {
            let mut attempt = self.clone();
            match attempt.apply(&path, candidate) {
                Ok(()) => {
                    *self = attempt;
                    return Ok(());
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| Error::invalid(path, "no value")))
    }
}

fn read_toml(path: &Path) -> Result<Value> {
    let file_err = |reason: String| Error::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .map_err(|e| file_err(format!("malformed toml: {}", e.to_string().trim_end())))?;
    parsed
        .try_deserialize::<Value>()
        .map_err(|e| file_err(format!("malformed toml: {e}")))
}

/// The typed readings of an environment value, best guess first.
fn env_candidates(current: Option<&Value>, raw: &str) -> Vec<Value> {
    let string = Value::String(raw.to_owned());
    match current {
        Some(Value::String(_)) => vec![string],
        Some(Value::Bool(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => vec![Value::Bool(true)],
            "false" => vec![Value::Bool(false)],
            _ => vec![string],
        },
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            if raw.trim_start().starts_with('[') {
                if let Ok(v) = serde_json::from_str::<Value>(raw) {
                    out.push(v);
                }
            }
            let parts: Vec<&str> = raw
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            let typed = parts
                .iter()
                .map(|p| match items.first() {
                    Some(Value::String(_)) => Value::String((*p).to_owned()),
                    _ => guess_scalar(p),
                })
                .collect();
            out.push(Value::Array(typed));
            out.push(Value::Array(
                parts
                    .iter()
                    .map(|p| Value::String((*p).to_owned()))
                    .collect(),
            ));
            out.push(string);
            out
        }
        _ => {
            let guess = guess_scalar(raw);
            if guess.is_string() {
                vec![guess]
            } else {
                vec![guess, string]
            }
        }
    }
}

/// A number, boolean, `null`, array or object when `raw` is one in JSON, else the string.
fn guess_scalar(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw.trim()) {
        Ok(v) => v,
        Err(_) => Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn env_values_are_typed_after_the_value_they_replace() {
        assert_eq!(
            env_candidates(Some(&json!(1)), "10300"),
            vec![json!(10300), json!("10300")]
        );
        assert_eq!(env_candidates(Some(&json!("")), "123"), vec![json!("123")]);
        assert_eq!(
            env_candidates(Some(&json!(false)), "TRUE"),
            vec![json!(true)]
        );
        assert_eq!(
            env_candidates(Some(&json!([])), "a:1, b:2")[0],
            json!(["a:1", "b:2"])
        );
        assert_eq!(env_candidates(Some(&json!([1])), "1,2")[0], json!([1, 2]));
        assert_eq!(
            env_candidates(None, "127.0.0.1:0"),
            vec![json!("127.0.0.1:0")]
        );
    }
}
