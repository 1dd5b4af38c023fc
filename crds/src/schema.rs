//! The CEL rules (`x-kubernetes-validations`) that span fields, attached to the generated
//! schemas with `#[schemars(transform = ...)]`. `validate.rs` holds the same rules in Rust.

use schemars::Schema;
use serde_json::{Value, json};

use crate::validate::{FOUR_DECIMAL_CURRENCIES, THREE_DECIMAL_CURRENCIES, ZERO_DECIMAL_CURRENCIES};

fn add_rules(schema: &mut Schema, rules: Vec<(String, String)>) {
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(rule, message)| json!({ "rule": rule, "message": message }))
        .collect();
    schema.insert("x-kubernetes-validations".to_owned(), Value::Array(rules));
}

fn rule(rule: &str, message: &str) -> (String, String) {
    (rule.to_owned(), message.to_owned())
}

pub(crate) fn printer_spec_rules(schema: &mut Schema) {
    add_rules(
        schema,
        vec![
            rule(
                "!has(self.credentials) || self.uri.startsWith('ipp://') || self.uri.startsWith('ipps://')",
                "credentials apply only to ipp:// and ipps:// printers",
            ),
            rule(
                "!has(self.caBundle) || self.uri.startsWith('ipps://')",
                "caBundle applies only to ipps:// printers",
            ),
            rule(
                "!has(self.insecureSkipTlsVerify) || !self.insecureSkipTlsVerify || self.uri.startsWith('ipps://')",
                "insecureSkipTlsVerify applies only to ipps:// printers",
            ),
            rule(
                "!(has(self.insecureSkipTlsVerify) && self.insecureSkipTlsVerify && has(self.caBundle))",
                "caBundle and insecureSkipTlsVerify are mutually exclusive",
            ),
        ],
    );
}

pub(crate) fn access_rules_rules(schema: &mut Schema) {
    add_rules(
        schema,
        vec![rule(
            "!has(self.authentication) || self.authentication != 'basic' || has(self.credentials)",
            "basic authentication requires credentials",
        )],
    );
}

pub(crate) fn quota_rules(schema: &mut Schema) {
    add_rules(
        schema,
        vec![
            rule(
                "(has(self.user) ? 1 : 0) + (has(self.group) ? 1 : 0) + (has(self.allUsers) && self.allUsers ? 1 : 0) == 1",
                "a quota names exactly one of user, group or allUsers",
            ),
            rule(
                "has(self.maxAmount) || has(self.maxImpressions)",
                "a quota sets maxAmount, maxImpressions or both",
            ),
        ],
    );
}

/// Amounts may not have more decimal places than their currency: one rule per exponent.
pub(crate) fn policy_spec_rules(schema: &mut Schema) {
    let list = |codes: &[&str]| {
        let quoted: Vec<String> = codes.iter().map(|code| format!("'{code}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let not_two: Vec<&str> = ZERO_DECIMAL_CURRENCIES
        .iter()
        .chain(&THREE_DECIMAL_CURRENCIES)
        .chain(&FOUR_DECIMAL_CURRENCIES)
        .copied()
        .collect();
    add_rules(
        schema,
        vec![
            (
                format!(
                    "!(self.currency in {}) || {}",
                    list(&ZERO_DECIMAL_CURRENCIES),
                    all_amounts_match(r"^[0-9]+$")
                ),
                "amounts in this currency have no decimal places".to_owned(),
            ),
            (
                format!(
                    "self.currency in {} || {}",
                    list(&not_two),
                    all_amounts_match(r"^[0-9]+(\.[0-9]{1,2})?$")
                ),
                "amounts in this currency have at most 2 decimal places".to_owned(),
            ),
            (
                format!(
                    "!(self.currency in {}) || {}",
                    list(&THREE_DECIMAL_CURRENCIES),
                    all_amounts_match(r"^[0-9]+(\.[0-9]{1,3})?$")
                ),
                "amounts in this currency have at most 3 decimal places".to_owned(),
            ),
        ],
    );
}

/// A CEL expression: every amount of money in the policy matches `pattern`.
fn all_amounts_match(pattern: &str) -> String {
    let optional = |path: &str| format!("(!has({path}) || {path}.matches(r'{pattern}'))");
    format!(
        "(!has(self.prices) || ({mono} && {color} && {per_job} && (!has(self.prices.media) || self.prices.media.all(m, {media_mono} && {media_color})))) && (!has(self.quotas) || self.quotas.all(q, {quota}))",
        mono = optional("self.prices.monoImpression"),
        color = optional("self.prices.colorImpression"),
        per_job = optional("self.prices.perJob"),
        media_mono = optional("m.monoImpression"),
        media_color = optional("m.colorImpression"),
        quota = optional("q.maxAmount"),
    )
}

/// What an apiserver would say about an object, for tests: the CRD's CEL rules, plus the
/// schema keywords this API uses (`pattern`, `enum`, lengths, ranges) turned into CEL rules,
/// all evaluated by kube's client-side CEL validator.
#[cfg(test)]
pub(crate) mod apiserver {
    use kube::core::CustomResourceExt;
    use kube::core::cel::Validator;
    use serde::Serialize;
    use serde_json::Value;

    pub(crate) fn verdict<K: CustomResourceExt + Serialize>(object: &K) -> Result<(), Vec<String>> {
        let crd = K::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        let mut schema = serde_json::to_value(schema.expect("derived CRDs have a schema"))
            .expect("a schema serializes");
        keywords_as_rules(&mut schema);
        let object = serde_json::to_value(object).expect("an object serializes");
        Validator::new()
            .validate(&schema, &object, None)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn keywords_as_rules(schema: &mut Value) {
        let Some(node) = schema.as_object_mut() else {
            return;
        };
        let integer = |key: &str| node.get(key).and_then(Value::as_f64).map(|n| n as i64);
        let mut rules = Vec::new();
        if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
            rules.push(format!("self.matches(r'{pattern}')"));
        }
        if let Some(values) = node.get("enum") {
            rules.push(format!("self in {values}"));
        }
        for (key, operator) in [("minItems", ">="), ("maxItems", "<="), ("minLength", ">=")] {
            if let Some(bound) = integer(key) {
                rules.push(format!("self.size() {operator} {bound}"));
            }
        }
        for (key, operator) in [("minimum", ">="), ("maximum", "<=")] {
            if let Some(bound) = integer(key) {
                rules.push(format!("self {operator} {bound}"));
            }
        }
        if !rules.is_empty() {
            let existing = node
                .entry("x-kubernetes-validations")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(existing) = existing.as_array_mut() {
                existing.extend(
                    rules
                        .into_iter()
                        .map(|rule| serde_json::json!({ "rule": rule })),
                );
            }
        }
        for key in ["properties", "items", "additionalProperties"] {
            match node.get_mut(key) {
                Some(Value::Object(children)) if key == "properties" => {
                    children.values_mut().for_each(keywords_as_rules);
                }
                Some(child) => keywords_as_rules(child),
                None => {}
            }
        }
    }
}
