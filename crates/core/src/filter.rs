//! Contact filters used by lists, counts and exports: tags, field conditions, channel,
//! subscription state and free-text search. Segments (a richer and/or/not language)
//! build on the same resolved conditions.

use crate::field::{FieldDefinition, FieldType};
use crate::subscription::SubscriptionState;
use crate::{ChannelId, FieldId, ValidationError};
use serde_json::Value;

/// A comparison on a custom field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    /// Equal.
    Eq,
    /// Not equal (contacts without the field do not match).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Text contains (case-insensitive for ASCII).
    Contains,
    /// The field has a value.
    Exists,
}

impl std::str::FromStr for FieldOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "eq" => FieldOp::Eq,
            "ne" => FieldOp::Ne,
            "lt" => FieldOp::Lt,
            "lte" => FieldOp::Lte,
            "gt" => FieldOp::Gt,
            "gte" => FieldOp::Gte,
            "contains" => FieldOp::Contains,
            "exists" => FieldOp::Exists,
            _ => {
                return Err(format!(
                    "unknown operator `{s}` (expected eq, ne, lt, lte, gt, gte, contains or exists)"
                ))
            }
        })
    }
}

/// A field condition as written by a user: `city:eq:Moscow`, `age:gt:30`, `email_ok:exists`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldConditionText {
    /// Field key.
    pub key: String,
    /// Operator.
    pub op: FieldOp,
    /// Operand as text (absent for `exists`).
    pub value: Option<String>,
}

impl std::str::FromStr for FieldConditionText {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let key = parts.next().unwrap_or_default().to_string();
        let op_text = parts.next().ok_or_else(|| {
            ValidationError::new(
                "field",
                format!("`{s}` is not a condition (expected key:op:value, e.g. age:gt:30)"),
            )
        })?;
        let op: FieldOp = op_text
            .parse()
            .map_err(|e: String| ValidationError::new("field", e))?;
        let value = parts.next().map(str::to_string);
        if op != FieldOp::Exists && value.is_none() {
            return Err(ValidationError::new(
                "field",
                format!("`{s}` needs a value after the operator"),
            ));
        }
        Ok(Self { key, op, value })
    }
}

/// The operand of a resolved condition, in the column it compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Compare the numeric column (number, bool, date, datetime).
    Num(f64),
    /// Compare the text column (text, choice).
    Text(String),
    /// No operand (`exists`).
    None,
}

/// A field condition checked against its definition and ready for SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    /// The field.
    pub field_id: FieldId,
    /// Operator.
    pub op: FieldOp,
    /// Operand.
    pub operand: Operand,
}

impl FieldConditionText {
    /// Resolves the condition with the field's definition, parsing the operand as the
    /// field's type so `age:gt:30` compares numbers and `born:lt:2000-01-01` dates.
    pub fn resolve(&self, def: &FieldDefinition) -> Result<FieldCondition, ValidationError> {
        let t = def.spec.field_type;
        let field = format!("field.{}", self.key);
        let operand = match (&self.value, self.op) {
            (_, FieldOp::Exists) => Operand::None,
            (None, _) => return Err(ValidationError::new(field, "needs a value")),
            (Some(v), FieldOp::Contains) => {
                if !matches!(t, FieldType::Text | FieldType::Choice) {
                    return Err(ValidationError::new(
                        field,
                        "`contains` works on text and choice fields only",
                    ));
                }
                Operand::Text(v.clone())
            }
            (Some(v), op) => match t {
                FieldType::Text | FieldType::Choice => {
                    if !matches!(op, FieldOp::Eq | FieldOp::Ne) && t == FieldType::Choice {
                        return Err(ValidationError::new(
                            field,
                            "choice fields compare with eq or ne",
                        ));
                    }
                    Operand::Text(v.clone())
                }
                _ => {
                    let parsed =
                        crate::field::FieldValue::validate(def, &Value::String(v.clone()), &field)?;
                    Operand::Num(parsed.num().unwrap_or_default())
                }
            },
        };
        Ok(FieldCondition {
            field_id: def.id,
            op: self.op,
            operand,
        })
    }
}

/// Which contacts to include. All parts are ANDed; an empty filter matches everyone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactFilter {
    /// Contacts carrying every one of these tags (names).
    pub tags: Vec<String>,
    /// Contacts meeting every condition.
    pub fields: Vec<FieldCondition>,
    /// Contacts with an identity on this channel.
    pub channel_id: Option<ChannelId>,
    /// Contacts with at least one identity in this state (on `channel_id` if given).
    pub subscription: Option<SubscriptionState>,
    /// Free text matched against names, username, phone and e-mail (case-insensitive).
    pub q: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldSpec;

    #[test]
    fn parses_and_resolves_conditions() {
        let c: FieldConditionText = "age:gt:30".parse().expect("parses");
        assert_eq!(c.op, FieldOp::Gt);
        let def = FieldDefinition {
            id: FieldId(7),
            spec: FieldSpec {
                key: "age".into(),
                label: "Age".into(),
                field_type: FieldType::Number,
                choices: vec![],
            },
        };
        assert_eq!(c.resolve(&def).map(|r| r.operand), Ok(Operand::Num(30.0)));
        let bad: FieldConditionText = "age:gt:old".parse().expect("parses");
        assert_eq!(
            bad.resolve(&def).map_err(|e| e.field),
            Err("field.age".into())
        );
        assert!("age:between:1".parse::<FieldConditionText>().is_err());
        assert!("age:gt".parse::<FieldConditionText>().is_err());
        assert!("age:exists".parse::<FieldConditionText>().is_ok());
    }
}
