//! `reply_markup` checks.
//!
//! Keyboards are where Telegram is least forgiving and our builders most likely to slip: a
//! `callback_data` over 64 *bytes* (easy with Cyrillic text), a button with no action, or a
//! relative URL each fail the whole send. The fake refuses them with Telegram's error codes.

use serde_json::Value;

use super::api::ApiError;

/// Fields of which an inline button must carry exactly one.
const INLINE_ACTIONS: &[&str] = &[
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
];

/// Telegram refuses keyboards with more buttons than this.
const MAX_BUTTONS: usize = 100;

fn cant_parse() -> ApiError {
    ApiError::bad("can't parse reply keyboard markup JSON object")
}

/// Checks a reply markup object the way Telegram does before sending.
pub(crate) fn validate(markup: &Value) -> Result<(), ApiError> {
    let obj = markup.as_object().ok_or_else(cant_parse)?;
    if let Some(rows) = obj.get("inline_keyboard") {
        let rows = rows.as_array().ok_or_else(cant_parse)?;
        let mut count = 0;
        for row in rows {
            for button in row.as_array().ok_or_else(cant_parse)? {
                count += 1;
                validate_inline_button(button)?;
            }
        }
        if count > MAX_BUTTONS {
            return Err(ApiError::bad("reply markup is too long"));
        }
        Ok(())
    } else if let Some(rows) = obj.get("keyboard") {
        let rows = rows.as_array().ok_or_else(cant_parse)?;
        for row in rows {
            for button in row.as_array().ok_or_else(cant_parse)? {
                let text = match button {
                    Value::String(s) => s.as_str(),
                    Value::Object(b) => b
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(cant_parse)?,
                    _ => return Err(cant_parse()),
                };
                if text.trim().is_empty() {
                    return Err(ApiError::bad("BUTTON_TEXT_INVALID"));
                }
            }
        }
        Ok(())
    } else if obj.get("remove_keyboard") == Some(&Value::Bool(true))
        || obj.get("force_reply") == Some(&Value::Bool(true))
    {
        Ok(())
    } else {
        Err(cant_parse())
    }
}

fn validate_inline_button(button: &Value) -> Result<(), ApiError> {
    let b = button.as_object().ok_or_else(cant_parse)?;
    let text = b
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(cant_parse)?;
    if text.trim().is_empty() {
        return Err(ApiError::bad("BUTTON_TEXT_INVALID"));
    }
    let actions = INLINE_ACTIONS
        .iter()
        .filter(|a| b.contains_key(**a))
        .count();
    if actions == 0 {
        return Err(ApiError::bad(
            "text buttons are unallowed in the inline keyboard",
        ));
    }
    if actions > 1 {
        return Err(ApiError::bad(
            "can't parse inline keyboard button: exactly one of the optional fields must be used",
        ));
    }
    if let Some(data) = b.get("callback_data") {
        match data.as_str() {
            Some(d) if !d.is_empty() && d.len() <= 64 => {}
            _ => return Err(ApiError::bad("BUTTON_DATA_INVALID")),
        }
    }
    if let Some(url) = b.get("url") {
        if !url.as_str().is_some_and(url_allowed) {
            return Err(ApiError::bad("BUTTON_URL_INVALID"));
        }
    }
    Ok(())
}

fn url_allowed(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    ["http://", "https://", "tg://"]
        .iter()
        .any(|scheme| lower.len() > scheme.len() && lower.starts_with(scheme))
}

/// Whether Telegram echoes this markup in the returned `Message` (only inline keyboards).
pub(crate) fn is_inline(markup: &Value) -> bool {
    markup.get("inline_keyboard").is_some()
}

/// Whether an inline keyboard has a button carrying `data` as its callback data.
pub(crate) fn has_callback(markup: &Value, data: &str) -> bool {
    markup
        .get("inline_keyboard")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .any(|b| b.get("callback_data").and_then(Value::as_str) == Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desc(v: Value) -> String {
        validate(&v).expect_err("should fail").description
    }

    #[test]
    fn inline_keyboards() {
        assert!(validate(&json!({"inline_keyboard":[[{"text":"a","callback_data":"x"}],[{"text":"b","url":"https://e.x"}]]})).is_ok());
        assert_eq!(
            desc(json!({"inline_keyboard":[[{"text":"a","callback_data":"я".repeat(33)}]]})),
            "Bad Request: BUTTON_DATA_INVALID"
        );
        assert!(validate(
            &json!({"inline_keyboard":[[{"text":"a","callback_data":"я".repeat(32)}]]})
        )
        .is_ok());
        assert_eq!(
            desc(json!({"inline_keyboard":[[{"text":"a","callback_data":""}]]})),
            "Bad Request: BUTTON_DATA_INVALID"
        );
        assert_eq!(
            desc(json!({"inline_keyboard":[[{"text":"a","url":"/relative"}]]})),
            "Bad Request: BUTTON_URL_INVALID"
        );
        assert_eq!(
            desc(json!({"inline_keyboard":[[{"text":"","url":"https://e.x"}]]})),
            "Bad Request: BUTTON_TEXT_INVALID"
        );
        assert!(desc(json!({"inline_keyboard":[[{"text":"a"}]]})).contains("unallowed"));
        assert!(desc(
            json!({"inline_keyboard":[[{"text":"a","url":"https://e.x","callback_data":"x"}]]})
        )
        .contains("exactly one"));
    }

    #[test]
    fn reply_keyboards() {
        assert!(validate(
            &json!({"keyboard":[["a",{"text":"b","request_contact":true}]],"resize_keyboard":true})
        )
        .is_ok());
        assert!(validate(&json!({"remove_keyboard":true})).is_ok());
        assert!(validate(&json!({"force_reply":true})).is_ok());
        assert!(desc(json!({})).contains("can't parse reply keyboard markup"));
        assert!(desc(json!({"keyboard":[[1]]})).contains("can't parse"));
    }

    #[test]
    fn callback_lookup() {
        let m = json!({"inline_keyboard":[[{"text":"a","callback_data":"x"}],[{"text":"b","callback_data":"y"}]]});
        assert!(has_callback(&m, "y"));
        assert!(!has_callback(&m, "z"));
        assert!(is_inline(&m));
        assert!(!is_inline(&json!({"remove_keyboard":true})));
    }
}
