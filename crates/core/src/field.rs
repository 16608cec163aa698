//! Custom fields: typed attributes whose definitions belong to a workspace and whose
//! values are validated against the definition before they are written.

use crate::{FieldId, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest text value (characters).
pub const MAX_TEXT_VALUE: usize = 4000;

/// The type of a custom field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Free text.
    Text,
    /// A number (integer or decimal).
    Number,
    /// True or false.
    Bool,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An instant, RFC 3339 (`2026-05-01T10:00:00+03:00`), stored in UTC.
    Datetime,
    /// One of a fixed list of choices.
    Choice,
}

impl FieldType {
    /// The stable lowercase name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Bool => "bool",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Choice => "choice",
        }
    }
}

impl std::str::FromStr for FieldType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "text" => FieldType::Text,
            "number" => FieldType::Number,
            "bool" => FieldType::Bool,
            "date" => FieldType::Date,
            "datetime" => FieldType::Datetime,
            "choice" => FieldType::Choice,
            _ => return Err(format!("unknown field type `{s}`")),
        })
    }
}

/// Checks a field key: a lowercase identifier used in API bodies, CSV headers and
/// templates (`{{ contact.fields.city }}`).
pub fn field_key(key: &str) -> Result<String, ValidationError> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(key.to_string())
    } else {
        Err(ValidationError::new(
            "key",
            format!("`{key}` is not a valid field key (lowercase letters, digits and _, starting with a letter, at most 64)"),
        ))
    }
}

/// A field definition as the domain sees it (ids are assigned by storage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldSpec {
    /// Identifier used in API bodies and CSV headers.
    pub key: String,
    /// Human label shown in the UI.
    pub label: String,
    /// Value type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Allowed values, for `choice` fields only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

impl FieldSpec {
    /// Validates a new definition: a proper key, a label, choices only (and always) for
    /// `choice` fields, no duplicate choices.
    pub fn validated(self) -> Result<FieldSpec, ValidationError> {
        let key = field_key(&self.key)?;
        let label = self.label.trim().to_string();
        if label.is_empty() || label.chars().count() > 100 {
            return Err(ValidationError::new("label", "must be 1 to 100 characters"));
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for c in self.choices {
            let c = c.trim().to_string();
            if c.is_empty() || c.chars().count() > 100 {
                return Err(ValidationError::new(
                    "choices",
                    "each choice must be 1 to 100 characters",
                ));
            }
            if choices.contains(&c) {
                return Err(ValidationError::new(
                    "choices",
                    format!("`{c}` appears twice"),
                ));
            }
            choices.push(c);
        }
        match (self.field_type, choices.is_empty()) {
            (FieldType::Choice, true) => {
                return Err(ValidationError::new(
                    "choices",
                    "a choice field needs at least one choice",
                ))
            }
            (t, false) if t != FieldType::Choice => {
                return Err(ValidationError::new(
                    "choices",
                    "only choice fields have choices",
                ))
            }
            _ => {}
        }
        Ok(FieldSpec {
            key,
            label,
            field_type: self.field_type,
            choices,
        })
    }
}

/// A field definition as stored, with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldDefinition {
    /// Storage id.
    pub id: FieldId,
    /// The definition.
    #[serde(flatten)]
    pub spec: FieldSpec,
}

/// A value checked against its definition, in the form storage keeps it: `text` for
/// text, choice, date (`YYYY-MM-DD`) and datetime (RFC 3339 UTC); `num` for number,
/// bool (0/1), date (days since 1970-01-01) and datetime (Unix seconds), so range
/// conditions compare numbers on an index.
///
/// It can only be built by [`FieldValue::validate`] or from storage, so a write that
/// receives one knows it was validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValue {
    field_id: FieldId,
    field_type: FieldType,
    text: Option<String>,
    num: Option<f64>,
}

impl FieldValue {
    /// Validates a JSON value for `def`. Strings are accepted for every type (as from a
    /// CSV cell) and parsed; `field` is the name to report on error.
    pub fn validate(
        def: &FieldDefinition,
        v: &Value,
        field: &str,
    ) -> Result<FieldValue, ValidationError> {
        let t = def.spec.field_type;
        let bad = |m: String| ValidationError::new(field, m);
        let (text, num) = match (t, v) {
            (_, Value::Null) => {
                return Err(bad("must not be null (unset the field instead)".into()))
            }
            (FieldType::Text, Value::String(s)) => {
                if s.chars().count() > MAX_TEXT_VALUE {
                    return Err(bad(format!("must be at most {MAX_TEXT_VALUE} characters")));
                }
                (Some(s.clone()), None)
            }
            (FieldType::Text, Value::Number(n)) => (Some(n.to_string()), None),
            (FieldType::Number, Value::Number(n)) => (None, n.as_f64()),
            (FieldType::Number, Value::String(s)) => {
                let n: f64 = s
                    .trim()
                    .replace(',', ".")
                    .parse()
                    .map_err(|_| bad(format!("`{s}` is not a number")))?;
                if !n.is_finite() {
                    return Err(bad(format!("`{s}` is not a finite number")));
                }
                (None, Some(n))
            }
            (FieldType::Bool, Value::Bool(b)) => (None, Some(f64::from(u8::from(*b)))),
            (FieldType::Bool, Value::String(s)) => {
                let b = match s.trim().to_lowercase().as_str() {
                    "true" | "yes" | "1" | "да" => true,
                    "false" | "no" | "0" | "нет" => false,
                    _ => return Err(bad(format!("`{s}` is not true or false"))),
                };
                (None, Some(f64::from(u8::from(b))))
            }
            (FieldType::Date, Value::String(s)) => {
                let d: jiff::civil::Date = s
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`{s}` is not a date (expected YYYY-MM-DD)")))?;
                let days = d
                    .since(jiff::civil::date(1970, 1, 1))
                    .map_err(|_| bad(format!("`{s}` is out of range")))?
                    .get_days();
                (Some(d.to_string()), Some(f64::from(days)))
            }
            (FieldType::Datetime, Value::String(s)) => {
                let ts: jiff::Timestamp = s.trim().parse().map_err(|_| {
                    bad(format!("`{s}` is not a date-time (expected RFC 3339, e.g. 2026-05-01T10:00:00+03:00)"))
                })?;
                (Some(ts.to_string()), Some(ts.as_second() as f64))
            }
            (FieldType::Choice, Value::String(s)) => {
                let s = s.trim();
                match def.spec.choices.iter().find(|c| c.as_str() == s) {
                    Some(c) => (Some(c.clone()), None),
                    None => {
                        return Err(bad(format!(
                            "`{s}` is not one of the choices: {}",
                            def.spec.choices.join(", ")
                        )))
                    }
                }
            }
            (t, other) => {
                return Err(bad(format!(
                    "expected a {} value, got {}",
                    t.as_str(),
                    json_kind(other)
                )))
            }
        };
        Ok(FieldValue {
            field_id: def.id,
            field_type: t,
            text,
            num,
        })
    }

    /// Rebuilds a value read back from storage.
    pub fn from_storage(
        field_id: FieldId,
        field_type: FieldType,
        text: Option<String>,
        num: Option<f64>,
    ) -> Self {
        Self {
            field_id,
            field_type,
            text,
            num,
        }
    }

    /// The field this value belongs to.
    pub fn field_id(&self) -> FieldId {
        self.field_id
    }

    /// The field's type.
    pub fn field_type(&self) -> FieldType {
        self.field_type
    }

    /// The text column as stored.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The numeric column as stored.
    pub fn num(&self) -> Option<f64> {
        self.num
    }

    /// The value as API JSON: a string, number or boolean according to the type.
    pub fn to_json(&self) -> Value {
        match self.field_type {
            FieldType::Number => self
                .num
                .and_then(serde_json::Number::from_f64)
                .map(|n| {
                    // Whole numbers read back as integers, as they were most likely written.
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                        _ => Value::Number(n),
                    }
                })
                .unwrap_or(Value::Null),
            FieldType::Bool => Value::Bool(self.num.unwrap_or(0.0) != 0.0),
            _ => self.text.clone().map(Value::String).unwrap_or(Value::Null),
        }
    }

    /// True when both values would be stored identically (used to make imports no-ops).
    pub fn same_as(&self, other: &FieldValue) -> bool {
        self.field_id == other.field_id && self.text == other.text && self.num == other.num
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(t: FieldType, choices: &[&str]) -> FieldDefinition {
        FieldDefinition {
            id: FieldId(1),
            spec: FieldSpec {
                key: "f".into(),
                label: "F".into(),
                field_type: t,
                choices: choices.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn values_are_checked_against_type() {
        let n = def(FieldType::Number, &[]);
        assert_eq!(
            FieldValue::validate(&n, &json!("42,5"), "f").map(|v| v.num()),
            Ok(Some(42.5))
        );
        assert!(FieldValue::validate(&n, &json!(true), "f").is_err());
        let d = def(FieldType::Date, &[]);
        let v = FieldValue::validate(&d, &json!("1970-01-11"), "f").expect("date");
        assert_eq!((v.text(), v.num()), (Some("1970-01-11"), Some(10.0)));
        assert!(FieldValue::validate(&d, &json!("31.12.2020"), "f").is_err());
        let c = def(FieldType::Choice, &["red", "green"]);
        assert!(FieldValue::validate(&c, &json!("green"), "f").is_ok());
        let e = FieldValue::validate(&c, &json!("blue"), "fields.f").expect_err("not a choice");
        assert_eq!(e.field, "fields.f");
        let dt = def(FieldType::Datetime, &[]);
        let v = FieldValue::validate(&dt, &json!("2026-05-01T10:00:00+03:00"), "f").expect("dt");
        assert_eq!(v.text(), Some("2026-05-01T07:00:00Z"));
        let b = def(FieldType::Bool, &[]);
        assert_eq!(
            FieldValue::validate(&b, &json!("да"), "f").map(|v| v.to_json()),
            Ok(json!(true))
        );
    }

    #[test]
    fn specs_are_checked() {
        let s = FieldSpec {
            key: "Bad Key".into(),
            label: "x".into(),
            field_type: FieldType::Text,
            choices: vec![],
        };
        assert_eq!(s.validated().map_err(|e| e.field), Err("key".into()));
        let s = FieldSpec {
            key: "color".into(),
            label: "Color".into(),
            field_type: FieldType::Choice,
            choices: vec![],
        };
        assert_eq!(s.validated().map_err(|e| e.field), Err("choices".into()));
    }

    #[test]
    fn numbers_round_trip_as_integers_when_whole() {
        let n = def(FieldType::Number, &[]);
        let v = FieldValue::validate(&n, &json!(30), "f").expect("n");
        assert_eq!(v.to_json(), json!(30));
    }
}
