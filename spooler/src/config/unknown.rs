//! Fields a document has that its kind does not: an apiserver would prune them silently,
//! a typo in a local file deserves an error.

use std::sync::LazyLock;

use serde_json::Value as Schema;
use serde_yaml::Value;

use super::Kind;

static SCHEMAS: LazyLock<Vec<(Kind, Schema)>> = LazyLock::new(|| {
    Kind::ALL
        .into_iter()
        .filter_map(|kind| {
            printfleet_crds::manifests::schema(kind.name()).map(|schema| (kind, schema))
        })
        .collect()
});

/// Fields an apiserver knows at the top of every object, outside the kind's schema.
const OBJECT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Paths (`spec.access.allowedUser`) of the fields in `document` its kind's schema lacks.
pub(super) fn fields(kind: Kind, document: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some((_, schema)) = SCHEMAS.iter().find(|(known, _)| *known == kind) {
        walk(schema, document, "", &mut unknown);
    }
    unknown
}

fn walk(schema: &Schema, value: &Value, path: &str, unknown: &mut Vec<String>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Mapping(mapping) => {
            let properties = schema.get("properties").and_then(Schema::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (key, item) in mapping {
                let key = match key.as_str() {
                    Some(key) => key.to_owned(),
                    None => serde_yaml::to_string(key)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                if path.is_empty() && OBJECT_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                match (properties.and_then(|p| p.get(&key)), additional) {
                    (Some(property), _) => walk(property, item, &child(&key), unknown),
                    (None, Some(additional)) => walk(additional, item, &child(&key), unknown),
                    // An object without declared properties (metadata) takes anything.
                    (None, None) if properties.is_none() => {}
                    (None, None) => unknown.push(child(&key)),
                }
            }
        }
        Value::Sequence(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{index}]"), unknown);
                }
            }
        }
        Value::Tagged(tagged) => walk(schema, &tagged.value, path, unknown),
        _ => {}
    }
}
