//! JSON Schemas (2020-12, the dialect of OpenAPI 3.1) of the validated types, built from the
//! same limits and character sets their validation reads, so the OpenAPI document says what
//! the parser accepts. Only with the `openapi` feature; the edge components do not build it.

use schemars::Schema;

/// A string of 1 to `max_len` ASCII characters matching `pattern` whole.
pub(crate) fn text(max_len: usize, pattern: &str) -> Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": max_len,
        "pattern": format!("^{pattern}$"),
    })
}

/// Sets `minimum` and `maximum` of the integer property `name` of an object schema.
pub(crate) fn bound(schema: &mut Schema, name: &str, min: u64, max: u64) {
    if let Some(property) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut(name))
        .and_then(serde_json::Value::as_object_mut)
    {
        property.insert("minimum".into(), min.into());
        property.insert("maximum".into(), max.into());
    }
}
