//! JSON tree helpers: dotted paths, merge patch, flattening to storage keys and back.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The segments of a dotted path; `""` is the empty path (the whole tree).
pub(crate) fn segments(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    }
}

/// `prefix.key`, or `key` when the prefix is empty.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The value at `path` inside `tree`.
pub(crate) fn get_at<'a>(tree: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(tree, |node, seg| node.as_object()?.get(*seg))
}

/// JSON merge patch (RFC 7396): objects merge recursively, `null` removes a member, anything
/// else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(&key);
                    } else {
                        merge_patch(target.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// Applies `value` at `path` inside `tree` with merge-patch semantics: an object merges into
/// the object there, `null` removes the member (back to its default), anything else replaces.
pub(crate) fn apply_at(tree: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        if value.is_null() {
            *tree = Value::Object(Map::new());
        } else {
            merge_patch(tree, value);
        }
        return;
    };
    let mut node = tree;
    for seg in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map
            .entry((*seg).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let mut patch = Map::new();
    patch.insert((*last).to_owned(), value);
    merge_patch(node, Value::Object(patch));
}

/// Flattens `value` into dotted keys under `prefix`: objects are walked, everything else
/// (arrays included) is a leaf; an empty object is kept as a leaf so it survives a round trip.
pub(crate) fn flatten(
    prefix: &str,
    value: &Value,
    out: &mut BTreeMap<String, Value>,
) -> Result<()> {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let full = join(prefix, key);
                if key.is_empty() || key.contains('.') {
                    return Err(Error::invalid(
                        full,
                        "a configuration key must not be empty or contain '.'",
                    ));
                }
                flatten(&full, child, out)?;
            }
            Ok(())
        }
        Value::Null if prefix.is_empty() => Ok(()),
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
            Ok(())
        }
    }
}

/// The storage keys of one root's sparse value (nothing for an empty or absent value).
pub(crate) fn flatten_root(root: &str, sparse: &Value) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    match sparse {
        Value::Null => {}
        Value::Object(map) if map.is_empty() => {}
        value => flatten(root, value, &mut out)?,
    }
    Ok(out)
}

/// Rebuilds a tree from dotted keys (relative to the tree's root).
pub(crate) fn unflatten<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Value {
    let mut tree = Value::Object(Map::new());
    for (key, value) in entries {
        apply_leaf(&mut tree, &segments(key), value.clone());
    }
    tree
}

fn apply_leaf(tree: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *tree = value;
        return;
    };
    let mut node = tree;
    for seg in parents {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map
            .entry((*seg).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert((*last).to_owned(), value);
    }
}

/// The dotted keys under `root` (`root` itself or `root.*`) of a flat map, relative to it.
pub(crate) fn root_entries<'a>(
    flat: &'a BTreeMap<String, Value>,
    root: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
    flat.iter().filter_map(move |(key, value)| {
        if key == root {
            Some(("", value))
        } else {
            key.strip_prefix(root)
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| (rest, value))
        }
    })
}

/// The changes that turn `old` into `new` (`None` = remove).
pub(crate) fn diff(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> BTreeMap<String, Option<Value>> {
    let mut changes = BTreeMap::new();
    for (key, value) in new {
        if old.get(key) != Some(value) {
            changes.insert(key.clone(), Some(value.clone()));
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            changes.insert(key.clone(), None);
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": 1});
        merge_patch(
            &mut target,
            json!({"a": {"b": 5, "c": null}, "d": [3], "f": {"g": null}}),
        );
        assert_eq!(target, json!({"a": {"b": 5}, "d": [3], "e": 1, "f": {}}));
    }

    #[test]
    fn apply_at_merges_objects_and_replaces_scalars() {
        let mut tree = json!({"a": {"b": 1}});
        apply_at(&mut tree, &["a"], json!({"c": 2}));
        assert_eq!(tree, json!({"a": {"b": 1, "c": 2}}));
        apply_at(&mut tree, &["a", "b"], json!([1]));
        assert_eq!(tree, json!({"a": {"b": [1], "c": 2}}));
        apply_at(&mut tree, &["x", "y"], json!(true));
        assert_eq!(tree, json!({"a": {"b": [1], "c": 2}, "x": {"y": true}}));
        apply_at(&mut tree, &["a", "c"], Value::Null);
        assert_eq!(tree, json!({"a": {"b": [1]}, "x": {"y": true}}));
        apply_at(&mut tree, &[], Value::Null);
        assert_eq!(tree, json!({}));
    }

    #[test]
    fn flatten_round_trips() {
        let tree = json!({"a": {"b": 1, "c": [1, {"x": 2}], "e": {}}, "d": "s"});
        let mut flat = BTreeMap::new();
        flatten("root", &tree, &mut flat).unwrap();
        assert_eq!(
            flat.keys().collect::<Vec<_>>(),
            ["root.a.b", "root.a.c", "root.a.e", "root.d"]
        );
        let back = unflatten(root_entries(&flat, "root"));
        assert_eq!(back, tree);
        assert_eq!(get_at(&tree, &["a", "b"]), Some(&json!(1)));
        assert_eq!(get_at(&tree, &["a", "z"]), None);
    }

    #[test]
    fn flatten_refuses_dotted_keys() {
        let err = flatten("root", &json!({"a.b": 1}), &mut BTreeMap::new()).unwrap_err();
        assert!(err.to_string().starts_with("key root.a.b: "), "{err}");
    }

    #[test]
    fn diff_lists_changes_and_removals() {
        let old: BTreeMap<String, Value> = [("a".into(), json!(1)), ("b".into(), json!(2))].into();
        let new: BTreeMap<String, Value> = [("a".into(), json!(1)), ("c".into(), json!(3))].into();
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            [("b".to_owned(), None), ("c".to_owned(), Some(json!(3)))].into()
        );
    }
}
