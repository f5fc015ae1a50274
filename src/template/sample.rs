//! The built-in sample render context used by `herald validate` and `herald preview`,
//! and the deep merge that layers a template's `sample:` front matter over it.

use serde_json::{Value, json};

/// The context every template can rely on: a contact with typical attributes, a
/// generic event, the workflow and the unsubscribe link. Fixed values only — no
/// "now" — so previews and validation are reproducible.
pub(super) fn base() -> Value {
    json!({
        "contact": {
            "id": "c-sample",
            "email": "ana@example.com",
            "first_name": "Ana",
            "last_name": "Silva",
            "city": "Lisbon",
            "country": "PT",
            "timezone": "Europe/Lisbon",
            "birthday": "1990-07-14",
            "discount_code": "SAMPLE10",
        },
        "event": {
            "name": "sample",
            "properties": {},
            "timestamp": "2026-01-15T09:30:00Z",
        },
        "workflow": { "name": "sample" },
        "unsubscribe_url": "http://127.0.0.1:8080/u/sample",
    })
}

/// Merges `overlay` into `target`: objects merge key by key, recursively; any other
/// overlay value (including lists and null) replaces what was there.
pub(super) fn deep_merge(target: &mut Value, overlay: &Value) {
    match (target, overlay) {
        (Value::Object(target), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match target.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, overlay) => *target = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_recursive_and_replaces_leaves() {
        let mut ctx = base();
        deep_merge(
            &mut ctx,
            &json!({
                "contact": { "first_name": "Bea", "tier": "gold", "city": null },
                "event": { "properties": { "items": [ { "name": "Mug" } ] } },
            }),
        );
        assert_eq!(ctx["contact"]["first_name"], "Bea");
        assert_eq!(ctx["contact"]["last_name"], "Silva");
        assert_eq!(ctx["contact"]["tier"], "gold");
        assert_eq!(ctx["contact"]["city"], Value::Null);
        assert_eq!(ctx["event"]["name"], "sample");
        assert_eq!(ctx["event"]["properties"]["items"][0]["name"], "Mug");

        // Lists are replaced, not concatenated.
        deep_merge(&mut ctx, &json!({"event": {"properties": {"items": []}}}));
        assert_eq!(ctx["event"]["properties"]["items"], json!([]));
    }
}
